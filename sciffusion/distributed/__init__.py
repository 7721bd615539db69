"""Scale-out paths of the same API: dask.distributed for generation and scoring, torch.distributed
(torchrun, DDP) for training. See ``docs/scale.md``.

* :func:`dask_client` - a client for a scheduler address or a fresh ``LocalCluster``.
* :func:`generate_to_store` - ensemble generation as dask tasks (runs of sampler batches of a
  member block), one model load per worker, member blocks written region by region into one
  :class:`~sciffusion.emulators.EnsembleStore` and resumable. Reached from Python through
  ``sample_from_checkpoint(..., scheduler=..., workers=...)`` and from the shell through
  ``sciffusion sample ... --scheduler ADDRESS | --workers N``.
* :mod:`sciffusion.distributed.ddp` - process-group set-up from the ``torchrun`` environment;
  :class:`~sciffusion.training.Trainer` uses it to train with DDP.
"""

from .cluster import SchedulerUnreachable, dask_client
from .ddp import DistributedContext, init_from_env

__all__ = ["DistributedContext", "SchedulerUnreachable", "dask_client", "generate_to_store", "init_from_env"]


def __getattr__(name):  # generate.py pulls in the sampler stack: load it on first use
    if name == "generate_to_store":
        from .generate import generate_to_store

        return generate_to_store
    raise AttributeError(name)
