"""Ensemble generation: many members for many conditions, in batches, with stable per-member seeds.

Member ``m`` of condition ``i`` is drawn from a generator seeded by ``(seed, i, m)``, so it is the
same draw whatever the batch size, the ensemble size, or which members were generated before a
run was interrupted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from sciffusion._deprecate import renamed_keywords
from sciffusion.diffusion.sample import check_sample_options, sample
from sciffusion.diffusion.streams import check_rng, stream_generators


@torch.no_grad()
@renamed_keywords(members="n_members")
def generate(
    denoiser,
    cond: torch.Tensor | None,
    n_members: int | Sequence[int],
    *,
    event_shape: Sequence[int],
    n_conditions: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    steps: int = 18,
    method: str | Callable = "heun",
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    rng: str = "torch",
    out_device: str | torch.device = "cpu",
    **sampler_options,
) -> torch.Tensor:
    """Generate ``(N, M, *event_shape)`` samples for ``N`` conditions and members ``n_members``.

    Args:
        denoiser: ``denoiser(x, sigma, cond=...)``.
        cond: ``(N, *cond_shape)`` conditioning, or None for an unconditional model (then give
            ``n_conditions``, default 1).
        n_members: ensemble size M (members ``0..M-1``) or explicit member ids (``members=`` is its
            deprecated spelling, for one release).
        event_shape: shape of one sample, e.g. ``(C, H, W)``.
        seed: base seed; member m of condition i uses the stream ``(seed, i, m)``.
        batch_size: samples per denoiser batch (mixes conditions and members).
        steps, method, **sampler_options: passed to :func:`sciffusion.diffusion.sample`; an option
            ``method`` does not take raises TypeError before the first draw.
        rng: ``"torch"`` (default: a ``torch.Generator`` per member) or ``"philox"`` (counter-based
            streams keyed alike, drawn for a whole batch at once: fewer, larger kernels on a GPU; other
            numbers). See :func:`sciffusion.diffusion.sample.stream_generators`.
        out_device: where the result is gathered (default the CPU; ``device`` keeps it where it was drawn).
    """
    check_sample_options(method, sampler_options)
    ids = list(range(n_members)) if isinstance(n_members, int) else [int(m) for m in n_members]
    n = len(cond) if cond is not None else (n_conditions or 1)
    x = sample_jobs(denoiser, cond, [(i, m) for i in range(n) for m in ids], event_shape=event_shape, seed=seed,
                    batch_size=batch_size, steps=steps, method=method, device=device, dtype=dtype, progress=progress,
                    rng=rng, out_device=out_device, **sampler_options)
    return x.reshape(n, len(ids), *event_shape)


@torch.no_grad()
def sample_jobs(denoiser, cond: torch.Tensor | None, jobs: Sequence[tuple[int, int]], *, event_shape: Sequence[int],
                seed: int, batch_size: int, steps: int, method: str | Callable, case_ids: Sequence[int] | None = None,
                device: str | torch.device | None = None, dtype: torch.dtype = torch.float32, progress: bool = False,
                rng: str = "torch", out_device: str | torch.device = "cpu", **sampler_options) -> torch.Tensor:
    """Samples ``(len(jobs), *event_shape)`` (CPU) for ``jobs[k] = (c, m)``: member ``m`` of ``cond[c]`` from
    the stream ``(seed, case_ids[c], m)`` (default ``c``), in consecutive batches of ``batch_size``. The
    dask tiles (:mod:`sciffusion.distributed.generate`) sample here too, so they see :func:`generate`'s batches.
    ``rng``: the kind of stream (:func:`~sciffusion.diffusion.sample.stream_generators`); ``out_device``: where
    the samples are gathered (default the CPU, as above).
    """
    check_rng(rng)
    out = torch.empty((len(jobs), *event_shape), dtype=dtype, device=out_device)
    for start in tqdm(range(0, len(jobs), batch_size), disable=not progress, desc="generating", leave=False):
        chunk = jobs[start : start + batch_size]
        # member m of case c: the stream (seed, case, m) of member_generators, all seeded in one pass
        gens = stream_generators(seed, [(c if case_ids is None else case_ids[c], m) for c, m in chunk], device or "cpu",
                                 rng=rng)
        kwargs = dict(sampler_options)
        if cond is not None:
            kwargs["cond"] = cond[[c for c, _ in chunk]].to(device=device, dtype=dtype)
        out[start : start + len(chunk)] = sample(denoiser, (len(chunk), *event_shape), steps=steps, method=method,
                                                 generator=gens, dtype=dtype, device=device, **kwargs).to(out.device)
    return out
