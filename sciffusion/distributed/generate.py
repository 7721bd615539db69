"""Ensemble generation as dask tasks, written region by region into one resumable zarr store.

The work of :func:`sciffusion.recipes.sample_from_checkpoint` is cut into *tiles*: runs of
consecutive sampler batches of one member block of the
:class:`~sciffusion.emulators.EnsembleStore` (``member_chunk`` members - one zarr chunk along
``member`` - for all cases). A tile task loads the model through :func:`load_model` - once per worker, cached by checkpoint directory and weights hash - and
returns its samples in physical units; one write task per member block gathers the block's tiles
and writes them with :meth:`EnsembleStore.write` (a region write, then the block is recorded as
done). Writes hold a :class:`distributed.Lock` named after the store, because the record of
finished blocks is one attribute that each write reads and rewrites.

Member ``m`` of case ``i`` (``i`` counts the selected cases) is drawn from the stream
``(seed, i, m)`` exactly as :func:`sciffusion.emulators.generate` does, so the ensemble is the
same draw as in the single-process run; and since tiles are cut at the single-process batch
boundaries, the denoiser sees the very same batches, so the ensemble is bit-for-bit the same
whatever the tiling, the number of workers, or how many times the run was interrupted and
resumed (``mode="resume"`` regenerates only blocks not yet recorded). (Cutting elsewhere would
still give the same draws, but batched kernels may round differently for other batch sizes.)
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sciffusion.distributed.cluster import n_workers

_MODELS: dict[tuple, Any] = {}
_LOADS: dict[str, int] = {}  # worker address -> number of model loads (for tests and logs)
_LOCK = threading.Lock()


def _worker_address() -> str:
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:  # not inside a dask worker: cache for this process
        return "local"


def load_model(checkpoint_dir: str, weights_sha256: str, device: str | None = None):
    """The EMA denoiser of ``checkpoint_dir``, loaded once per dask worker and then cached.

    The cache key is ``(worker, checkpoint_dir, weights_sha256, device)``; the hash is checked
    against the file on the first load, so a checkpoint overwritten during a run fails loudly
    instead of mixing two models in one ensemble.
    """
    from sciffusion.checkpoint import load_denoiser, sha256, weights_file

    worker = _worker_address()
    key = (worker, str(checkpoint_dir), weights_sha256, device)
    with _LOCK:
        if key not in _MODELS:
            d = Path(checkpoint_dir)
            weights = weights_file(d)
            if not weights.exists():
                raise FileNotFoundError(f"checkpoint {d} is not readable from worker {worker}; "
                                        "workers need the checkpoint on a shared filesystem")
            found = sha256(weights)
            if found != weights_sha256:
                raise ValueError(f"checkpoint {weights} changed during the run (sha256 {found[:12]}..., "
                                 f"expected {weights_sha256[:12]}...)")
            _MODELS[key] = load_denoiser(d, device=device)[0]
            _LOADS[worker] = _LOADS.get(worker, 0) + 1
        return _MODELS[key]


def model_loads() -> dict[str, int]:
    """Model loads so far in this process, per worker address (run it with ``client.run``)."""
    return dict(_LOADS)


@torch.no_grad()
def generate_tile(model: dict, cond: np.ndarray | None, case_ids: Sequence[int], jobs: Sequence[tuple[int, int]], *,
                  event_shape: Sequence[int], seed: int, batch_size: int, steps: int, method: str,
                  normalizer: dict | None, variables: Sequence[str], device: str | None = None,
                  **sampler_options) -> np.ndarray:
    """Samples ``(len(jobs), *event_shape)`` in physical units (float32) for ``jobs`` (``(c, m)``: member
    ``m`` of case ``case_ids[c]``, condition ``cond[c]``), drawn by
    :func:`~sciffusion.emulators.members.sample_jobs` as :func:`sciffusion.emulators.generate` draws them.
    ``model`` is ``{"checkpoint_dir", "weights_sha256"}``.
    """
    from sciffusion.data import Normalizer
    from sciffusion.emulators.members import sample_jobs

    den = load_model(model["checkpoint_dir"], model["weights_sha256"], device)
    out = sample_jobs(den, None if cond is None else torch.as_tensor(cond), list(jobs), event_shape=event_shape,
                      seed=seed, batch_size=batch_size, steps=steps, method=method, case_ids=case_ids, device=device,
                      **sampler_options)
    if normalizer is not None:
        out = Normalizer.from_dict(normalizer).decode(out, list(variables))
    return out.numpy()


def write_block(store, block: range, tiles: Sequence[np.ndarray], n_cases: int, variables: Sequence[str],
                dims: Sequence[str], lock_name: str) -> int:
    """Join a member block's tiles (its jobs, case-major, in order) and write the block."""
    from distributed import Lock

    x = np.concatenate(list(tiles), axis=0).reshape(n_cases, len(block), *tiles[0].shape[1:])
    with Lock(lock_name):
        store.write(block, {v: x[:, :, k] for k, v in enumerate(variables)}, {v: list(dims) for v in variables})
    return block.start


def default_batches_per_task(batches_per_block: int, n_blocks: int, workers: int) -> int:
    """Sampler batches per task: a whole member block when there are at least two blocks per
    worker, else blocks cut so that there are about two tasks per worker."""
    if n_blocks >= 2 * workers:
        return batches_per_block
    per_block = math.ceil(2 * workers / max(n_blocks, 1))
    return max(1, math.ceil(batches_per_block / per_block))


def generate_to_store(client, store, plan: dict, *, seed: int = 0, batch_size: int = 64, steps: int = 18,
                      method: str = "heun", batches_per_task: int | None = None, progress: bool = True,
                      device: str | None = None, **sampler_options) -> list[int]:
    """Fill the missing member blocks of ``store`` on the workers of ``client``.

    A member block of ``b`` members for ``N`` cases is the job list ``[(i, m) for i in cases for m
    in block]`` that :func:`sciffusion.emulators.generate` samples in batches of ``batch_size``;
    each task takes ``batches_per_task`` of those batches, so every denoiser call sees the same
    batch as in the single-process run and the ensemble is bit-for-bit the same.

    Args:
        client: a :class:`distributed.Client` (see :func:`~sciffusion.distributed.dask_client`).
        store: the :class:`~sciffusion.emulators.EnsembleStore` (pre-allocated; its
            :meth:`~sciffusion.emulators.EnsembleStore.missing` blocks are generated).
        plan: :func:`sciffusion.recipes.sampling_plan` of the run.
        batches_per_task: sampler batches per task (default :func:`default_batches_per_task`).
        seed, batch_size, steps, method, device, **sampler_options: as in
            :func:`sciffusion.recipes.sample_from_checkpoint`.

    Returns the first member of each block written, in completion order. If a task fails the
    other tasks are cancelled and the error is raised; blocks written so far stay recorded, so
    ``mode="resume"`` continues from them.
    """
    from distributed import as_completed
    from tqdm.auto import tqdm

    from sciffusion.diffusion.sample import check_sample_options

    check_sample_options(method, sampler_options)  # here, not in the first task to fail
    blocks = store.missing()
    if not blocks:
        return []
    cond = plan["cond"].numpy() if plan["cond"] is not None else None
    n_cases = len(cond) if cond is not None else plan["template"].sizes["case"]
    per_block = math.ceil(n_cases * store.member_chunk / batch_size)
    k = int(batches_per_task or default_batches_per_task(per_block, len(blocks), n_workers(client)))
    if k < 1:
        raise ValueError(f"batches_per_task must be at least 1, got {batches_per_task}")
    model = {"checkpoint_dir": str(Path(plan["checkpoint_dir"]).resolve()), "weights_sha256": plan["weights_sha256"]}
    normalizer = plan["normalizer"].to_dict() if plan["normalizer"] is not None else None
    opts = dict(event_shape=tuple(plan["event_shape"]), seed=seed, batch_size=batch_size, steps=steps, method=method,
                normalizer=normalizer, variables=plan["variables"], device=device, **sampler_options)
    lock_name = f"sciffusion-store-{Path(store.path).resolve()}"
    writes = []
    for block in blocks:
        jobs = [(i, m) for i in range(n_cases) for m in block]
        tiles = []
        for a in range(0, len(jobs), k * batch_size):
            part = jobs[a : a + k * batch_size]
            lo, hi = part[0][0], part[-1][0] + 1  # the cases this tile touches
            tiles.append(client.submit(generate_tile, model, cond[lo:hi] if cond is not None else None,
                                       list(range(lo, hi)), [(i - lo, m) for i, m in part], pure=False, **opts))
        writes.append(client.submit(write_block, store, block, tiles, n_cases, plan["variables"], plan["dims"],
                                    lock_name, pure=False))
    done = []
    bar = tqdm(total=len(writes), disable=not progress, desc="member blocks", leave=False)
    try:
        for fut in as_completed(writes, loop=client.loop):
            done.append(fut.result())
            bar.update(1)
    except BaseException:
        client.cancel(writes)
        raise
    finally:
        bar.close()
    return done
