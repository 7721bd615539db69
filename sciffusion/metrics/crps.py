"""Continuous ranked probability score: ensemble (standard and fair) and Gaussian.

For members x_1..x_M, their sorted values x_(1) <= ... <= x_(M) and an observation y,

    CRPS = (1/M) sum_i |x_i - y|  -  (1/K) sum_i (2i - M - 1) x_(i)

using sum_ij |x_i - x_j| = 2 sum_i (2i - M - 1) x_(i). K = M^2 gives the standard estimator (the
CRPS of the empirical CDF, Hersbach 2000; Gneiting & Raftery 2007, eq. 21); K = M(M - 1) gives the
fair estimator (Ferro et al. 2008; Ferro 2014; Zamo & Naveau 2018), which is unbiased for the CRPS
of the distribution the members are drawn from. The standard estimator exceeds it by
E|X - X'| / (2M) (= 1/(sqrt(pi) M) for N(0, 1) members).

The kernel works in cache-sized blocks of points: copy a block member-last, subtract the
observation (the score is translation invariant, and this keeps float32 accurate for offset
fields such as temperatures in K), sort each row in place, then one dot product with the
coefficients (2i - M - 1) and one sum of |x - y|. Time is one sort, O(M log M) per point; extra
memory is one block, never an M x M temporary. float32 stays float32. For small ensembles
(M <= 32) stored member-first, NaN-free blocks are instead sorted by a sorting network applied
to whole member rows at once (elementwise min/max, SIMD-vectorised, no transpose), which is
several times faster than a per-point sort.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ._core import apply_pointwise, float_dtype, metric, reduce

_BLOCK_ELEMS = 1 << 17  # members x points per block (512 KiB of float32: stays in L2)


def _member_rows(fc: np.ndarray):
    """View ``fc[..., M]`` as 2-D ``(M, N)`` (member-first memory) or ``(N, M)`` without copying
    when the layout allows; returns ``(array2d, member_first)``."""
    m = fc.shape[-1]
    n = fc.size // m if m else 0
    mf = np.moveaxis(fc, -1, 0)
    if mf.flags.c_contiguous:
        return mf.reshape(m, n), True
    if fc.flags.c_contiguous:
        return fc.reshape(n, m), False
    return np.ascontiguousarray(mf).reshape(m, n), True


def sorting_network(m: int) -> list[tuple[int, int]]:
    """Comparators (i, j), i < j, of Batcher's odd-even merge sort for ``m`` inputs (the network
    for the next power of two with comparators touching inputs >= m dropped: padding those with
    +inf, such comparators never act). Knuth, TAOCP vol. 3, sect. 5.3.4."""
    p2 = 1 << max(0, (m - 1).bit_length())
    pairs, p = [], 1
    while p < p2:
        k = p
        while k >= 1:
            for j in range(k % p, p2 - k, 2 * k):
                for i in range(min(k, p2 - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < m:
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


_NETWORK_MAX_M = 32  # up to here a vectorised sorting network beats np.sort (measured, AVX2)


def _block_network(rows_in, yb, net, buf, spare, coef):
    """Spread and skill sums of a NaN-free member-first block: sort the points' members in
    parallel with a sorting network (elementwise min/max of whole rows, no transpose)."""
    m, n = rows_in.shape
    b = buf[:, :n]
    np.subtract(rows_in, yb, out=b, casting="unsafe")
    rows, sp = [b[k] for k in range(m)], spare[:n]
    for i, j in net:
        ri, rj = rows[i], rows[j]
        np.minimum(ri, rj, out=sp)
        np.maximum(ri, rj, out=rj)
        rows[i], sp = sp, ri
    spread = rows[0] * coef[0]
    for k in range(1, m):
        np.multiply(rows[k], coef[k], out=sp)
        spread += sp
    skill = np.abs(rows[0])
    for k in range(1, m):
        skill += np.abs(rows[k], out=rows[k])
    return spread, skill


def _block_sort(rows_in, member_first, yb, buf, coef, ones, skipna):
    """Spread and skill sums of a block by np.sort of a member-last copy; NaN members dropped
    (``skipna``) with per-point counts. Returns (spread, skill, count or None)."""
    m_full = coef.size
    b = buf[: yb.size]
    # member-last copy of the block, centred on the observation, in one pass
    np.subtract(rows_in.T if member_first else rows_in, yb[:, None], out=b, casting="unsafe")
    b.sort(axis=-1)  # NaN sorts last
    spread = b @ coef
    cnt = None
    if skipna:
        rows = np.flatnonzero(np.isnan(b[:, -1]))
        if rows.size:
            sub = b[rows]
            nan = np.isnan(sub)
            sub[nan] = 0
            cnt = np.full(yb.size, m_full, b.dtype)
            cnt[rows] = m_full - nan.sum(axis=1)
            # sum_{i<=m} (2i - m - 1) x_(i) = sum_i (2i - M - 1) x_(i) + (M - m) sum_i x_(i)
            spread[rows] = sub @ coef + (m_full - cnt[rows]) * sub.sum(axis=1)
            b[rows] = sub
    np.abs(b, out=b)
    return spread, b @ ones, cnt


def crps_kernel(fc: np.ndarray, obs: np.ndarray, fair: bool = False, skipna: bool = True,
                dtype=None) -> np.ndarray:
    """Pointwise ensemble CRPS of ``fc[..., M]`` (member last, any strides) against ``obs[...]``."""
    dt = float_dtype(fc, dtype=dtype)
    shape = np.broadcast_shapes(fc.shape[:-1], np.shape(obs))
    fc = np.broadcast_to(fc, shape + fc.shape[-1:])
    m_full = fc.shape[-1]
    n = math.prod(shape)
    out = np.empty(n, dt)
    if n == 0:
        return out.reshape(shape)
    if m_full == 0:
        out[:] = np.nan
        return out.reshape(shape)
    src, member_first = _member_rows(fc)
    y = np.broadcast_to(np.asarray(obs, dtype=dt), shape).reshape(n)
    coef = (2.0 * np.arange(1, m_full + 1) - m_full - 1).astype(dt)
    ones = np.ones(m_full, dt)
    use_net = member_first and 1 < m_full <= _NETWORK_MAX_M
    block = max(1, (_BLOCK_ELEMS * (4 if use_net else 1)) // m_full)
    buf = None  # member-last block buffer of the sort path, allocated when first needed
    if use_net:
        net = sorting_network(m_full)
        nbuf, spare = np.empty((m_full, min(block, n)), dt), np.empty(min(block, n), dt)
    m = dt.type(m_full)
    k_full = m * (m - 1) if fair else m * m
    with np.errstate(invalid="ignore", divide="ignore"):
        for s in range(0, n, block):
            e = min(n, s + block)
            rows_in = src[:, s:e] if member_first else src[s:e]
            cnt = None
            if use_net and not np.isnan(rows_in.sum()) and not np.isnan(y[s:e].sum()):
                spread, skill = _block_network(rows_in, y[s:e], net, nbuf, spare, coef)
            else:
                if buf is None:
                    buf = np.empty((min(block, n), m_full), dt)
                spread, skill, cnt = _block_sort(rows_in, member_first, y[s:e], buf, coef, ones, skipna)
            if cnt is None:
                out[s:e] = skill / m - spread / k_full
            else:
                k = cnt * (cnt - 1) if fair else cnt * cnt
                out[s:e] = skill / cnt - spread / k  # 0/0 -> NaN: fair with one member, or none
        out[np.isnan(y)] = np.nan  # also when every member is NaN and skill came out 0/0
    return out.reshape(shape)


@metric
def crps_ensemble(forecast, observation, *, member_dim="member", fair=False, reduce_dims=None,
                  weights=None, skipna=True, dtype=None):
    """Ensemble CRPS, standard (empirical CDF) or fair, by the sorted-ensemble formula.

        CRPS = (1/M) sum_i |x_i - y| - (1/K) sum_i (2i - M - 1) x_(i),
        K = M^2 (standard) or M (M - 1) (``fair=True``, Ferro 2014).

    Args:
        forecast: ensemble with a ``member_dim`` dimension (DataArray, Dataset, numpy, torch,
            dask-backed xarray).
        observation: the verifying values, without the member dimension.
        member_dim: name (or axis, for arrays) of the ensemble dimension.
        fair: use the fair (unbiased) estimator; needs at least two valid members per point.
        reduce_dims: dims to average over after scoring each point (None keeps all, "all").
        weights: weights for that average, e.g. :func:`latitude_weights`.
        skipna: drop NaN members per point, scoring with that point's member count M_p
            (standard needs M_p >= 1, fair M_p >= 2, else NaN). ``False``: any NaN member gives
            NaN. A NaN observation always gives NaN.
        dtype: computation/result dtype; default the forecast's float dtype (float32 stays float32).

    Returns:
        The score with the type of ``forecast`` (lazy for dask).

    References:
        Hersbach (2000), Wea. Forecasting 15, 559; Gneiting & Raftery (2007), JASA 102, 359;
        Ferro (2014), QJRMS 140, 1917; Zamo & Naveau (2018), Math. Geosci. 50, 209.
    """
    dt = float_dtype(forecast, dtype=dtype)
    (score,) = apply_pointwise(crps_kernel, forecast, observation, member_dim, [dt],
                               fair=fair, skipna=skipna, dtype=dt)
    return reduce(score.rename("crps"), reduce_dims, weights)


def _crps_gaussian_values(mu, sigma, y):
    from scipy.special import ndtr

    z = (y - mu) / sigma
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return sigma * (z * (2 * ndtr(z) - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def crps_gaussian(mu, sigma, observation, *, reduce_dims=None, weights=None):
    """CRPS of the normal distribution N(mu, sigma^2) against ``observation``.

        CRPS = sigma [ z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi) ],  z = (y - mu) / sigma

    (Gneiting et al. 2005, Mon. Wea. Rev. 133, 1098, eq. 5). Inputs broadcast against each other;
    xarray (eager or dask), numpy and torch are accepted and the type of ``observation`` comes back.
    """
    from ._core import as_dataarray

    if any(isinstance(a, (xr.DataArray, xr.Dataset)) for a in (mu, sigma, observation)):
        score = xr.apply_ufunc(_crps_gaussian_values, mu, sigma, observation, dask="allowed")
        if isinstance(score, xr.Dataset):
            return score.map(lambda v: reduce(v, reduce_dims, weights))
        return reduce(score.rename("crps"), reduce_dims, weights)
    obs, conv = as_dataarray(observation, "observation")
    from ._core import _to_numpy

    mu_np, sig_np = _to_numpy(mu), _to_numpy(sigma)
    score = xr.DataArray(_crps_gaussian_values(mu_np, sig_np, obs.values), dims=obs.dims)
    return conv.back(reduce(score, conv.dims(reduce_dims), conv.weights(weights)))
