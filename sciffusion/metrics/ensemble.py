"""Ensemble-mean scores, spread-skill, rank histogram and energy score."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ._core import apply_pointwise, drop_member_coords, float_dtype, metric, reduce, resolve_dims
from .crps import _BLOCK_ELEMS, _member_rows, crps_kernel
from .torch_scores import torch_path


@metric
def rmse(forecast, observation, *, member_dim="member", reduce_dims=None, weights=None):
    """Root-mean-square error of the ensemble mean: sqrt( mean_w[ (mean_i x_i - y)^2 ] ).

    The mean is taken over ``reduce_dims`` with ``weights``; with ``reduce_dims=None`` this is the
    absolute error of the ensemble mean at each point. NaN members are skipped.
    """
    err = forecast.mean(member_dim) - observation
    return np.sqrt(reduce(err * err, reduce_dims, weights)).rename("rmse")


@metric
def bias(forecast, observation, *, member_dim="member", reduce_dims=None, weights=None):
    """Mean error of the ensemble mean, mean_w[ mean_i x_i - y ] (positive: forecast too high)."""
    return reduce(forecast.mean(member_dim) - observation, reduce_dims, weights).rename("bias")


def _spread_skill_kernel(fc, obs, correction=True, dtype=None):
    """Per point of ``fc[..., M]`` (member last, any strides), stacked on a last axis of two: the
    ensemble variance (ddof=1, times (M+1)/M with ``correction``) and the squared error of the
    ensemble mean, both NaN where the observation is NaN or fewer than two members are valid;
    NaN members are skipped. Cache-sized blocks of member rows, two passes, no float64 upcast."""
    dt = float_dtype(fc, dtype=dtype)
    shape = np.broadcast_shapes(fc.shape[:-1], np.shape(obs))
    fc = np.broadcast_to(fc, shape + fc.shape[-1:])
    m = fc.shape[-1]
    n = math.prod(shape)
    out = np.full((2, n), np.nan, dt)  # returned as a (..., 2) view: each component contiguous
    if n == 0 or m == 0:
        return out.T.reshape(shape + (2,))
    src, member_first = _member_rows(fc)
    y = np.broadcast_to(np.asarray(obs, dtype=dt), shape).reshape(n)
    block = max(1, _BLOCK_ELEMS // m)
    dev = np.empty((m, min(block, n)), dt)
    with np.errstate(invalid="ignore", divide="ignore"):
        for s in range(0, n, block):
            e = min(n, s + block)
            rows = src[:, s:e] if member_first else src[s:e].T
            mean = np.add.reduce(rows, axis=0, dtype=dt) / dt.type(m)
            d = np.subtract(rows, mean, out=dev[:, : e - s], casting="unsafe")
            v = np.einsum("ij,ij->j", d, d) / dt.type(m - 1)
            cnt = dt.type(m)
            redo = np.flatnonzero(np.isnan(v))
            if redo.size:  # NaN members: the same with per-point counts
                sub = rows[:, redo].astype(dt)
                ok = ~np.isnan(sub)
                cnt = np.full(e - s, m, dt)
                cnt[redo] = np.count_nonzero(ok, axis=0)
                mean[redo] = np.where(ok, sub, 0).sum(axis=0) / cnt[redo]
                sub = np.where(ok, sub - mean[redo], 0)
                v[redo] = np.einsum("ij,ij->j", sub, sub) / (cnt[redo] - 1)
                v[redo[cnt[redo] < 2]] = np.nan
            if correction:
                v *= (cnt + 1) / cnt
            np.copyto(v, np.nan, where=np.isnan(y[s:e]))
            mean -= y[s:e]
            mean *= mean
            np.copyto(mean, np.nan, where=np.isnan(v))
            out[0, s:e], out[1, s:e] = v, mean
    return out.T.reshape(shape + (2,))


@metric
def spread_skill_ratio(forecast, observation, *, member_dim="member", reduce_dims=None,
                       weights=None, correction=True, components=False):
    """Spread-skill ratio sqrt(mean_w[ (M+1)/M * var_i(x) ]) / RMSE(ensemble mean).

    ``var_i`` is the unbiased (ddof=1) ensemble variance at each point; the average over
    ``reduce_dims`` is taken before the square roots (as WeatherBench 2). For a perfectly
    reliable ensemble of M members, E[(mean - y)^2] = (M+1)/M * E[var], so with the finite-ensemble
    correction (``correction=True``, Fortin et al. 2014, J. Hydrometeor. 15, 1708; Leutbecher &
    Palmer 2008) the ratio is 1 for any M; ``correction=False`` gives the uncorrected ratio
    (WeatherBench 2's convention). M is counted per point (NaN members skipped); points with a NaN
    observation or fewer than two valid members are left out of both averages.
    With ``components=True`` returns a Dataset with ``spread``, ``skill`` (RMSE) and ``ratio``.
    """
    forecast = drop_member_coords(forecast, member_dim)
    dt = float_dtype(forecast)
    both = xr.apply_ufunc(  # variance and squared error in one pass, on a new last axis
        _spread_skill_kernel, forecast, observation,
        input_core_dims=[[member_dim], []], output_core_dims=[["_spread_skill"]],
        dask="parallelized", output_dtypes=[dt],
        dask_gufunc_kwargs={"output_sizes": {"_spread_skill": 2}},
        kwargs={"correction": correction, "dtype": dt},
    )
    both = reduce(both, reduce_dims, weights)
    if not components:  # one call on the (small) reduced array: xarray's per-operation cost shows
        return xr.apply_ufunc(lambda b: np.sqrt(b[..., 0]) / np.sqrt(b[..., 1]), both, input_core_dims=[["_spread_skill"]],
                              dask="allowed").rename("spread_skill_ratio")
    spread, skill = np.sqrt(both[..., 0]), np.sqrt(both[..., 1])
    return xr.Dataset({"spread": spread, "skill": skill, "ratio": spread / skill})


def _rank_dtype(m):
    return np.uint8 if m < 254 else np.uint16 if m < 65534 else np.int64


def _rank_kernel(fc, obs):
    """Per point: number of members below the observation and number equal to it (member last).
    Points with a NaN observation or any NaN member get below = M + 1 (off the histogram)."""
    shape = np.broadcast_shapes(fc.shape[:-1], np.shape(obs))
    m = fc.shape[-1]
    itype = _rank_dtype(m)
    y = np.broadcast_to(obs, shape).reshape(-1)
    mf = np.moveaxis(np.broadcast_to(fc, shape + (m,)), -1, 0)
    src = mf.reshape(m, -1) if mf.flags.c_contiguous else np.ascontiguousarray(mf).reshape(m, -1)
    n = y.size
    below, eq = np.empty(n, itype), np.empty(n, itype)
    block = max(1, (1 << 18) // max(m, 1))
    tmp = np.empty((m, min(block, n)), bool)
    acc = {"dtype": itype} if itype != np.uint8 else {}
    with np.errstate(invalid="ignore"):
        for s in range(0, n, block):
            e = min(n, s + block)
            xb, yb, t = src[:, s:e], y[s:e], tmp[:, : e - s]
            np.less(xb, yb, out=t)  # member-first rows: vectorised compare, then a row-sum
            np.add.reduce(t.view(np.uint8), axis=0, out=below[s:e], **acc)
            np.equal(xb, yb, out=t)
            np.add.reduce(t.view(np.uint8), axis=0, out=eq[s:e], **acc)
            bad = np.isnan(xb.sum(axis=0)) | np.isnan(yb)
            below[s:e][bad] = m + 1
    return below.reshape(shape), eq.reshape(shape)


def _histogram(below, eq, weights, m, ties, seed):
    """Counts per rank of (K, R) integer arrays summed over R; returns (K, m + 1) float64."""
    k, r = below.shape
    nb = m + 2  # ranks 0..m plus the off-histogram slot m + 1 of invalid points
    if ties == "random":
        flat_below, flat_eq = below.reshape(-1), eq.reshape(-1)
        tied = np.flatnonzero(flat_eq)
        tied = tied[flat_below[tied] <= m]
        offset = np.zeros(tied.size, np.int64)
        if tied.size:
            offset = (np.random.default_rng(seed).random(tied.size) * (flat_eq[tied] + 1.0)).astype(np.int64)
        if k == 1 and weights is None:  # the common case: one histogram, unweighted
            counts = np.bincount(flat_below, minlength=nb).astype(float)
            counts -= np.bincount(flat_below[tied], minlength=nb)
            counts += np.bincount(flat_below[tied] + offset, minlength=nb)
            return counts[None, : m + 1]
        rank = below.astype(np.int64)
        rank.reshape(-1)[tied] += offset
        if k > 1:
            rank += np.arange(k)[:, None] * nb
        w = None if weights is None else np.broadcast_to(weights, (k, r)).ravel()
        counts = np.bincount(rank.ravel(), w, minlength=k * nb)
        return counts.reshape(k, nb)[:, : m + 1].astype(float)
    # fractional: weight w / (eq + 1) on each of ranks below .. below + eq (difference array)
    valid = below <= m
    w = np.ones((k, r)) if weights is None else np.broadcast_to(weights, (k, r))
    share = w[valid] / (eq[valid] + 1.0)
    start = (np.arange(k)[:, None] * nb + below)[valid]
    stop = start + eq[valid].astype(np.int64) + 1
    diff = np.bincount(start, share, minlength=k * nb) - np.bincount(stop, share, minlength=k * nb)
    return np.cumsum(diff.reshape(k, nb), axis=1)[:, : m + 1]


@metric
def rank_histogram(forecast, observation, *, member_dim="member", reduce_dims=None, weights=None,
                   ties="random", seed=0, normalize=False):
    """Rank histogram (Talagrand diagram): how often the observation falls at each rank 0..M
    among the M members, summed (with ``weights``) over ``reduce_dims``.

    Rank = #{x_i < y} + a tie share. ``ties="random"`` puts an observation equal to t members at
    a rank drawn uniformly from below .. below + t (seeded by ``seed``; Hamill 2001, Mon. Wea.
    Rev. 129, 550); ``ties="fractional"`` spreads weight 1/(t+1) over those ranks. Points with a
    NaN observation or any NaN member are left out. ``normalize=True`` divides by the total so
    each histogram sums to 1. Output has a new ``rank`` dimension (last for arrays).
    """
    if ties not in ("random", "fractional"):
        raise ValueError(f"ties must be 'random' or 'fractional', got {ties!r}")
    m = forecast.sizes[member_dim]
    below, eq = apply_pointwise(_rank_kernel, forecast, observation, member_dim, [_rank_dtype(m)] * 2)
    dims = resolve_dims(reduce_dims, below)
    kept = [d for d in below.dims if d not in dims]
    if weights is not None:
        if not dims:
            raise ValueError("weights were given but reduce_dims is None")
        weights = weights.broadcast_like(below).transpose(*kept, *dims)
    below, eq = below.transpose(*kept, *dims), eq.transpose(*kept, *dims)
    rank = xr.DataArray(np.arange(m + 1), dims="rank")
    if below.chunks is not None:  # lazy: one indicator per rank, reduced by dask
        if ties == "random":
            rng_da = xr.apply_ufunc(lambda e: np.random.default_rng(seed).random(e.shape), eq,
                                    dask="parallelized", output_dtypes=[float])
            r = below.astype(np.int64) + (rng_da * (eq + 1.0)).astype(np.int64)
            share = (r == rank).astype(float)
        else:
            lo = below.astype(np.int64)
            share = ((rank >= lo) & (rank <= lo + eq)) / (eq + 1.0)
        share = share.where(below <= m, 0.0)
        hist = (share * weights).sum(dims) if weights is not None else share.sum(dims)
    else:
        shape_k = [below.sizes[d] for d in kept]
        k, r_ = math.prod(shape_k), math.prod(below.sizes[d] for d in dims)
        w = None if weights is None else weights.values.reshape(k, r_)
        counts = _histogram(below.values.reshape(k, r_), eq.values.reshape(k, r_), w, m, ties, seed)
        coords = {c: v for c, v in below.coords.items() if set(v.dims) <= set(kept)}
        hist = xr.DataArray(counts.reshape(shape_k + [m + 1]), dims=kept + ["rank"], coords=coords)
    hist = hist.assign_coords(rank=np.arange(m + 1)).transpose(*kept, "rank")
    if normalize:
        hist = hist / hist.sum("rank")
    return hist.rename("rank_histogram")


_ES_BLOCK = 1 << 18  # float64 elements per block of cases (2 MiB): members x (event + members)
_ES_TOL = 1e-2  # a squared distance below this share of |a|^2 + |b|^2 is recomputed directly


def _cases(x, lead, s, e):
    """Cases s..e of ``x[*lead, ...]`` as one float64 copy with a leading case axis."""
    if not lead:
        return np.array(x[None], dtype=np.float64)
    return x[np.unravel_index(np.arange(s, e), lead)].astype(np.float64, copy=False)


def _sq_dists(a, b, ia, ib, sq):
    """Overwrite ``sq[k]`` by |a[ia[k]] - b[ib[k]]|^2 computed directly (rows of (n, D) arrays),
    in chunks that keep the temporary below one block."""
    step = max(1, _ES_BLOCK // a.shape[-1])
    for s in range(0, len(ia), step):
        diff = a[ia[s:s + step]] - b[ib[s:s + step]]
        sq[s:s + step] = np.einsum("kd,kd->k", diff, diff)


def _energy_block(x, y, fair, skipna):
    """Energy score of the cases of ``x[B, M, D]`` (float64, overwritten) against ``y[B, D]``.

    Centred on the mean member (the score is translation invariant), the squared distances come
    from one Gram matrix, |x_i - x_j|^2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j, and likewise for
    |x_i - y|^2. Where that cancels (a squared distance below ``_ES_TOL`` of |x_i|^2 + |x_j|^2,
    e.g. near-duplicate members) it is recomputed directly, so the result is exact to rounding.
    """
    nb, m, d = x.shape
    bad = np.isnan(x).any(axis=-1) if skipna else np.zeros((nb, m), bool)
    valid = ~bad
    x[bad] = 0.0
    cnt = valid.sum(axis=1).astype(np.float64)
    centre = x.sum(axis=1) / np.maximum(cnt, 1.0)[:, None]
    x -= centre[:, None, :]
    x[bad] = 0.0
    y = y - centre
    nx = np.einsum("bmd,bmd->bm", x, x)
    d2 = np.matmul(x, x.transpose(0, 2, 1))
    d2 *= -2.0
    d2 += nx[:, :, None]
    d2 += nx[:, None, :]
    ny = np.einsum("bd,bd->b", y, y)[:, None]
    s2 = nx - 2.0 * np.matmul(x, y[:, :, None])[..., 0] + ny
    diag = np.arange(m)
    d2[:, diag, diag] = 0.0
    flat_x = x.reshape(nb * m, d)
    b_, i_, j_ = np.nonzero(np.triu(d2 < _ES_TOL * (nx[:, :, None] + nx[:, None, :]), 1))
    if b_.size:
        exact = np.empty(b_.size)
        _sq_dists(flat_x, flat_x, b_ * m + i_, b_ * m + j_, exact)
        d2[b_, i_, j_] = d2[b_, j_, i_] = exact
    b_, i_ = np.nonzero(s2 < _ES_TOL * (nx + ny))
    if b_.size:
        exact = np.empty(b_.size)
        _sq_dists(flat_x, y, b_ * m + i_, b_, exact)
        s2[b_, i_] = exact
    vf = valid.astype(np.float64)
    skill = np.einsum("bm,bm->b", np.sqrt(np.maximum(s2, 0.0)), vf)
    pair = np.einsum("bij,bi,bj->b", np.sqrt(np.maximum(d2, 0.0)), vf, vf)
    k = cnt * (cnt - 1.0) if fair else cnt * cnt
    with np.errstate(invalid="ignore", divide="ignore"):
        return skill / cnt - pair / (2.0 * k)


def _energy_kernel(fc, obs, nevent=0, fair=False, skipna=True):
    """Energy score of fc[..., M, *E] against obs[..., *E] (the nevent event axes flattened),
    in blocks of cases; one event value reduces to the CRPS kernel."""
    m = fc.shape[fc.ndim - 1 - nevent]
    event = fc.shape[fc.ndim - nevent:]
    lead = np.broadcast_shapes(fc.shape[: fc.ndim - 1 - nevent], obs.shape[: obs.ndim - nevent])
    d = math.prod(event)
    x = np.broadcast_to(fc, lead + (m,) + event)
    y = np.broadcast_to(obs, lead + event)
    if d == 1:  # |x_i - x_j| in one dimension: the CRPS, by the sorted kernel
        return crps_kernel(x.reshape(lead + (m,)), y.reshape(lead), fair=fair, skipna=skipna,
                           dtype=np.float64)
    n = math.prod(lead)
    out = np.full(n, np.nan)
    if m == 0 or d == 0:
        return out.reshape(lead)
    step = max(1, _ES_BLOCK // (m * (d + m)))
    for s in range(0, n, step):
        e = min(n, s + step)
        xb = _cases(x, lead, s, e).reshape(e - s, m, d)
        yb = _cases(y, lead, s, e).reshape(e - s, d)
        out[s:e] = _energy_block(xb, yb, fair, skipna)
    return out.reshape(lead)


@torch_path("energy_score")
@metric
def energy_score(forecast, observation, *, member_dim="member", event_dims=(), fair=False,
                 reduce_dims=None, weights=None, skipna=True):
    """Energy score, the multivariate CRPS over the vector spanned by ``event_dims``:

        ES = (1/M) sum_i ||x_i - y|| - 1/(2K) sum_ij ||x_i - x_j||,  K = M^2 or M(M-1) (``fair``)

    with the Euclidean norm over ``event_dims`` (Gneiting & Raftery 2007, eq. 22). With no
    event dims it equals :func:`crps_ensemble` (and is computed by it). Otherwise the distances
    come from one float64 Gram matrix per point (one matrix product, O(M^2 D)) after centring
    on the mean member, with distances that would lose digits to cancellation recomputed
    directly; points are scored in blocks of a few MiB, so memory stays a fraction of the input.
    With ``skipna`` a member with any NaN in the event vector is dropped at that point.
    """
    event_dims = [event_dims] if isinstance(event_dims, str) else list(event_dims)
    for d in event_dims:
        if d not in forecast.dims:
            raise ValueError(f"event dim {d!r} not in forecast dims {tuple(forecast.dims)}")
        if d not in observation.dims:
            raise ValueError(f"event dim {d!r} not in observation dims {tuple(observation.dims)}")
    obs = observation
    forecast = drop_member_coords(forecast, member_dim)
    dt = float_dtype(forecast)
    score = xr.apply_ufunc(
        _energy_kernel, forecast, obs,
        input_core_dims=[[member_dim, *event_dims], list(event_dims)],
        dask="parallelized", output_dtypes=[np.float64],
        dask_gufunc_kwargs={"allow_rechunk": True},
        kwargs={"nevent": len(event_dims), "fair": fair, "skipna": skipna},
    ).astype(dt)
    return reduce(score.rename("energy_score"), reduce_dims, weights)
