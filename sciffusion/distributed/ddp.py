"""torch.distributed plumbing for DDP training under ``torchrun``.

``torchrun --nproc_per_node N -m sciffusion train CONFIG`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT`` set; :func:`init_from_env` joins them
into a process group (NCCL when CUDA is available, gloo otherwise). The
:class:`~sciffusion.training.Trainer` reads the group through :class:`DistributedContext`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the process group (``world == 1`` for a plain run)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> DistributedContext:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def rows(self, batch_size: int) -> slice:
        """This rank's contiguous slice of a global batch of ``batch_size`` rows."""
        if batch_size % self.world:
            raise ValueError(f"batch_size={batch_size} is not divisible by the world size {self.world}; "
                             "the global batch is split evenly over the ranks")
        per = batch_size // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def gather(self, obj: Any) -> list[Any] | None:
        """``[obj of rank 0, ..., obj of rank N-1]`` on rank 0, None elsewhere."""
        if not self.active:
            return [obj]
        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init_from_env(backend: str | None = None) -> tuple[DistributedContext, bool]:
    """Join the process group described by the torchrun environment, if there is one.

    Returns ``(context, started)``: ``started`` is True when this call created the group (the
    caller should then :func:`shutdown` it). Without ``WORLD_SIZE > 1`` nothing happens. On CUDA
    each process uses the GPU ``LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        return DistributedContext.current(), False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "RANK" not in os.environ:  # not launched by torchrun
        return DistributedContext(), False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return DistributedContext.current(), True


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` under torchrun with CUDA, else ``cuda`` / ``cpu``."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def shutdown() -> None:
    """Leave the process group; all ranks meet at a barrier first, so no rank tears its
    connections down while another still talks to it (gloo aborts the process otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
