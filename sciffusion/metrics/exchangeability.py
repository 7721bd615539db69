"""Are emulated members exchangeable with physics members? Three two-ensemble diagnostics.

Each takes two ensembles on the same grid, ``emulated`` and ``physics`` (xarray DataArray or
Dataset, both with ``member_dim``, of any sizes M_e and M_p) and the usual ``reduce_dims`` /
``weights`` keywords (:mod:`sciffusion.metrics._core`):

* :func:`member_rank_histogram`: the rank of each physics member among the emulated ones
  (:func:`~sciffusion.metrics.rank_histogram` with the physics members as observations, summed
  over them too); flat when the two are exchangeable; :func:`flatness` measures how far from flat.
* :func:`spread_ratio`: ``sqrt(mean_w var_e) / sqrt(mean_w var_p)`` (unbiased member
  variances, averaged over ``reduce_dims`` before the root), 1 when the spreads agree.
* :func:`energy_distance`: the two-sample energy distance (Székely & Rizzo 2004, 2013)
  ``D = 2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (V-statistic, Euclidean norm over ``event_dims``;
  equal to ``2 mean_j [ES(X, y_j) - ES(Y, y_j)]`` with :func:`~sciffusion.metrics.energy_score`),
  averaged over ``reduce_dims``, with a permutation-test p-value: the member labels of the pooled
  sample are permuted (the same ``n_permutations`` permutations at every point, drawn from
  ``seed``), so a pooled test treats each member as one whole field; ``p = (1 + #{D_perm >= D}) /
  (1 + n_permutations)``.
"""

from __future__ import annotations

import functools

import numpy as np
import xarray as xr

from ._core import _per_variable, reduce, resolve_dims
from .ensemble import rank_histogram

_PERM = "_permutation"
_BLOCK = 1 << 22  # elements of the pairwise-difference temporary per block of points


def _two_ensembles(func):
    """Score a pair of Datasets variable by variable (multi-output results get ``{var}_`` prefixes)."""

    @functools.wraps(func)
    def wrapper(emulated, physics, *args, **kwargs):
        if isinstance(emulated, xr.Dataset):
            return _per_variable(func, emulated, physics, *args, **kwargs)
        return func(emulated, physics, *args, **kwargs)

    return wrapper


def _dims(reduce_dims, da, member_dim):
    if isinstance(reduce_dims, str) and reduce_dims == "all":
        return [d for d in da.dims if d not in (member_dim, _PERM)]
    return resolve_dims(reduce_dims, da)


def member_rank_histogram(emulated, physics, *, member_dim="member", reduce_dims=None, weights=None, **kwargs):
    """Histogram of the rank of every physics member within the emulated ensemble (ranks 0..M_e),
    summed over the physics members and ``reduce_dims``; ``kwargs`` go to :func:`rank_histogram`
    (``ties``, ``seed``, ``normalize``). Flat (each rank 1/(M_e+1)) for exchangeable members."""
    obs = physics.rename({member_dim: "physics_member"})
    dims = ["physics_member", *_dims(reduce_dims, physics, member_dim)]
    return rank_histogram(emulated, obs, member_dim=member_dim, reduce_dims=dims, weights=weights, **kwargs)


def flatness(hist, rank_dim: str = "rank"):
    """Kolmogorov-Smirnov distance of a rank histogram from uniform, ``max_r |F(r) - (r+1)/(M+1)|``
    (0 = flat; comparable across ensemble sizes)."""
    f = hist.cumsum(rank_dim) / hist.sum(rank_dim)
    n = hist.sizes[rank_dim]
    return abs(f - xr.DataArray(np.arange(1, n + 1) / n, dims=rank_dim)).max(rank_dim).rename("rank_flatness")


@_two_ensembles
def spread_ratio(emulated, physics, *, member_dim="member", reduce_dims=None, weights=None):
    """``sqrt(mean_w var_e) / sqrt(mean_w var_p)``: the emulated spread over the physics spread."""
    ve, vp = emulated.var(member_dim, ddof=1), physics.var(member_dim, ddof=1)
    dims = _dims(reduce_dims, ve, member_dim)
    return np.sqrt(reduce(ve, dims, weights) / reduce(vp, dims, weights)).rename("spread_ratio")


def _labels(m1: int, m2: int, n_permutations: int, seed: int) -> np.ndarray:
    """(1 + P, m1 + m2) indicators of the X sample: the observed split, then P random ones."""
    rng = np.random.default_rng(seed)
    s = np.zeros((1 + n_permutations, m1 + m2))
    s[0, :m1] = 1.0
    for p in range(n_permutations):
        s[1 + p, rng.permutation(m1 + m2)[:m1]] = 1.0
    return s


def _energy_kernel(x, y, nevent, labels):
    """D for each labelling (last axis) of the pooled sample at each point: x[..., M1, *E], y[..., M2, *E]."""
    m1, m2 = x.shape[x.ndim - 1 - nevent], y.shape[y.ndim - 1 - nevent]
    lead = np.broadcast_shapes(x.shape[: x.ndim - 1 - nevent], y.shape[: y.ndim - 1 - nevent])
    d = int(np.prod(x.shape[x.ndim - nevent:]))
    z = np.concatenate([np.broadcast_to(x, lead + x.shape[len(lead):]).reshape(-1, m1, d),
                        np.broadcast_to(y, lead + y.shape[len(lead):]).reshape(-1, m2, d)], axis=1).astype(np.float64)
    n, m = z.shape[:2]
    out = np.empty((n, labels.shape[0]))
    step = max(1, _BLOCK // (m * m * max(d, labels.shape[0])))
    for s in range(0, n, step):  # blocks of points: memory stays O(block), whatever the grid
        diff = z[s:s + step, :, None, :] - z[s:s + step, None, :, :]
        dist = np.sqrt(np.einsum("bijd,bijd->bij", diff, diff))  # (b, m, m) pairwise distances
        total = dist.sum((-1, -2))[:, None]
        sr = dist.sum(-1) @ labels.T  # s' D 1
        ss = np.einsum("bip,pi->bp", dist @ labels.T, labels)  # s' D s
        cross, yy = sr - ss, total - 2 * sr + ss
        out[s:s + step] = 2 * cross / (m1 * m2) - ss / m1**2 - yy / m2**2
    return out.reshape(lead + (labels.shape[0],))


@_two_ensembles
def energy_distance(emulated, physics, *, member_dim="member", event_dims=(), reduce_dims=None, weights=None,
                    n_permutations=0, seed=0):
    """Two-sample energy distance between the ensembles (module docstring), averaged over
    ``reduce_dims``; with ``n_permutations > 0`` a Dataset with ``energy_distance`` and ``p_value``."""
    event_dims = [event_dims] if isinstance(event_dims, str) else list(event_dims)
    labels = _labels(emulated.sizes[member_dim], physics.sizes[member_dim], int(n_permutations), seed)
    core = [member_dim, *event_dims]
    res = xr.apply_ufunc(_energy_kernel, emulated, physics, input_core_dims=[core, core], output_core_dims=[[_PERM]],
                         exclude_dims={member_dim}, dask="parallelized", output_dtypes=[np.float64],
                         dask_gufunc_kwargs={"output_sizes": {_PERM: labels.shape[0]}, "allow_rechunk": True},
                         kwargs={"nevent": len(event_dims), "labels": labels})
    res = reduce(res, _dims(reduce_dims, res, member_dim), weights)
    stat = res.isel({_PERM: 0}).rename("energy_distance")
    if not n_permutations:
        return stat
    exceed = (res.isel({_PERM: slice(1, None)}) >= stat * (1 - 1e-12)).sum(_PERM)
    return xr.Dataset({"energy_distance": stat, "p_value": (1.0 + exceed) / (1.0 + n_permutations)})
