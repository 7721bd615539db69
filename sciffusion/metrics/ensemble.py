"""Ensemble-mean scores, spread-skill, rank histogram and energy score."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ._core import apply_pointwise, drop_member_coords, float_dtype, metric, reduce, resolve_dims


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


@metric
def spread_skill_ratio(forecast, observation, *, member_dim="member", reduce_dims=None,
                       weights=None, correction=True, components=False):
    """Spread-skill ratio sqrt(mean_w[ (M+1)/M * var_i(x) ]) / RMSE(ensemble mean).

    ``var_i`` is the unbiased (ddof=1) ensemble variance at each point; the average over
    ``reduce_dims`` is taken before the square roots (as WeatherBench 2). For a perfectly
    reliable ensemble of M members, E[(mean - y)^2] = (M+1)/M * E[var], so with the finite-ensemble
    correction (``correction=True``, Fortin et al. 2014, J. Hydrometeor. 15, 1708; Leutbecher &
    Palmer 2008) the ratio is 1 for any M; ``correction=False`` gives the uncorrected ratio
    (WeatherBench 2's convention). M is counted per point (NaN members skipped).
    With ``components=True`` returns a Dataset with ``spread``, ``skill`` (RMSE) and ``ratio``.
    """
    m = forecast.count(member_dim)
    var = forecast.var(member_dim, ddof=1)
    if correction:
        var = var * (m + 1) / m
    spread = np.sqrt(reduce(var.where(observation.notnull()), reduce_dims, weights))
    err = forecast.mean(member_dim) - observation
    skill = np.sqrt(reduce((err * err).where(var.notnull()), reduce_dims, weights))
    ratio = (spread / skill).rename("spread_skill_ratio")
    if components:
        return xr.Dataset({"spread": spread, "skill": skill, "ratio": ratio})
    return ratio


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


def _energy_kernel(fc, obs, nevent=0, fair=False, skipna=True):
    """Energy score of fc[..., M, *E] against obs[..., *E] (the nevent event axes flattened)."""
    m = fc.shape[fc.ndim - 1 - nevent]
    event = fc.shape[fc.ndim - nevent:]
    lead = np.broadcast_shapes(fc.shape[: fc.ndim - 1 - nevent], obs.shape[: obs.ndim - nevent])
    d = math.prod(event)
    x = np.broadcast_to(fc, lead + (m,) + event).reshape(lead + (m, d)).astype(np.float64)
    y = np.broadcast_to(obs, lead + event).reshape(lead + (1, d))
    valid = ~np.isnan(x).any(axis=-1) if skipna else np.ones(lead + (m,), bool)
    x = np.where(valid[..., None], x, 0.0)
    cnt = valid.sum(axis=-1)
    skill = (np.sqrt(((x - y) ** 2).sum(axis=-1)) * valid).sum(axis=-1)
    pair = np.zeros(lead)
    for i in range(m - 1):
        dist = np.sqrt(((x[..., i + 1:, :] - x[..., i:i + 1, :]) ** 2).sum(axis=-1))
        pair += (dist * valid[..., i + 1:] * valid[..., i:i + 1]).sum(axis=-1)
    k = cnt * (cnt - 1.0) if fair else cnt * 1.0 * cnt
    with np.errstate(invalid="ignore", divide="ignore"):
        return skill / cnt - pair / k


@metric
def energy_score(forecast, observation, *, member_dim="member", event_dims=(), fair=False,
                 reduce_dims=None, weights=None, skipna=True):
    """Energy score, the multivariate CRPS over the vector spanned by ``event_dims``:

        ES = (1/M) sum_i ||x_i - y|| - 1/(2K) sum_ij ||x_i - x_j||,  K = M^2 or M(M-1) (``fair``)

    with the Euclidean norm over ``event_dims`` (Gneiting & Raftery 2007, eq. 22). With no
    event dims it equals :func:`crps_ensemble`. Cost O(M^2 D) per point. With ``skipna`` a
    member with any NaN in the event vector is dropped at that point.
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
