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
(M <= 32) blocks are instead copied member-first (a transpose for member-last data) and sorted
by a sorting network applied to whole member rows at once (elementwise min/max,
SIMD-vectorised), which is several times faster than a per-point sort. A NaN only spoils its own
point there: NaN observations stay on the network (the point is NaN anyway) and only the points
with a NaN member are scored again by the NaN-dropping sort.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ._core import apply_pointwise, float_dtype, metric, reduce
from .torch_scores import torch_path, wants_torch

_BLOCK_ELEMS = 1 << 17  # members x points per block (512 KiB of float32: stays in L2)
_MIN_BLOCK = 4096  # points: below this many per block the per-block overhead shows


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


_NETWORK_MAX_M = 32  # up to here a vectorised sorting network beats np.sort (measured, AVX2) ...
_NETWORK_MAX_M_LAST = 24  # ... and up to here for member-last data, which it must transpose


def _block_network(rows_in, yb, net, buf, spare, coef):
    """Spread and skill sums of a block of ``(M, n)`` member rows (any strides: member-last data
    is transposed into the member-first buffer by the subtraction): sort the points' members in
    parallel with a sorting network (elementwise min/max of whole rows). A NaN member or
    observation makes that point's sums NaN and touches no other point."""
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


def _block_sort(rows_in, yb, buf, coef, skipna):
    """Spread and skill sums of a block of ``(M, n)`` member rows by np.sort of a member-last
    copy; NaN members dropped (``skipna``) with per-point counts. Returns (spread, skill, count),
    the count per point where a NaN was dropped, else the scalar M. The row contractions use
    einsum, not BLAS: their cost does not depend on how many threads BLAS would start for a
    small product on a busy machine."""
    m_full = coef.size
    b = buf[: yb.size]
    # member-last copy of the block, centred on the observation, in one pass
    np.subtract(rows_in.T, yb[:, None], out=b, casting="unsafe")
    b.sort(axis=-1)  # NaN sorts last
    spread = np.einsum("ij,j->i", b, coef)
    cnt = b.dtype.type(m_full)
    if skipna:
        rows = np.flatnonzero(np.isnan(b[:, -1]) & ~np.isnan(yb))  # a NaN observation: NaN anyway
        if rows.size:
            sub = b if rows.size == yb.size else b[rows]
            nan = np.isnan(sub)
            np.copyto(sub, 0, where=nan)
            cnt = np.full(yb.size, m_full, b.dtype)
            cnt[rows] = m_full - np.count_nonzero(nan, axis=1)
            # sum_{i<=m} (2i - m - 1) x_(i) = sum_i (2i - M - 1) x_(i) + (M - m) sum_i x_(i)
            spread[rows] = np.einsum("ij,j->i", sub, coef) + (m_full - cnt[rows]) * np.einsum("ij->i", sub)
            if sub is not b:
                b[rows] = sub
    np.abs(b, out=b)
    return spread, np.einsum("ij->i", b), cnt


def _grow(buf, rows):
    """``buf`` if it has at least ``rows`` rows, else a new buffer of that many."""
    return buf if buf.shape[0] >= rows else np.empty((rows, buf.shape[1]), buf.dtype)


def _finish(spread, skill, cnt, fair, out):
    """CRPS from the sums into ``out``: skill / M_p - spread / K_p, K_p = M_p^2 or, if ``fair``,
    M_p (M_p - 1); 0/0 gives NaN (fair with one member, or no member)."""
    k = cnt * (cnt - 1) if fair else cnt * cnt
    np.divide(skill, cnt, out=out)
    out -= np.divide(spread, k, out=spread)
    return out


def crps_kernel(fc: np.ndarray, obs: np.ndarray, fair: bool = False, skipna: bool = True,
                dtype=None) -> np.ndarray:
    """Pointwise ensemble CRPS of ``fc[..., M]`` (member last, any strides) against ``obs[...]``.

    Blocks go through the sorting network (M <= 32 member-first, M <= 24 member-last) or np.sort.
    NaN observations stay on that path (their points are set to NaN). Points with a NaN member
    come out NaN there, and with ``skipna`` only those points are scored again by the
    NaN-dropping sort, so a land mask or a few missing members cost little."""
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
    use_net = 1 < m_full <= (_NETWORK_MAX_M if member_first else _NETWORK_MAX_M_LAST)
    block = max(1, (_BLOCK_ELEMS * (4 if use_net else 1)) // m_full)
    block = min(block, max(_MIN_BLOCK, -(-n // 4)))  # a small input still gets several blocks
    buf = np.empty((0, m_full), dt)  # member-last block of the sort path, grown when needed
    if use_net:
        net = sorting_network(m_full)
        nbuf, spare = np.empty((m_full, min(block, n)), dt), np.empty(min(block, n), dt)
    m = dt.type(m_full)
    with np.errstate(invalid="ignore", divide="ignore"):
        for s in range(0, n, block):
            e = min(n, s + block)
            rows_in, yb, ob = (src[:, s:e] if member_first else src[s:e].T), y[s:e], out[s:e]
            if use_net:
                spread, skill = _block_network(rows_in, yb, net, nbuf, spare, coef)
                cnt = m
            else:
                buf = _grow(buf, e - s)
                spread, skill, cnt = _block_sort(rows_in, yb, buf, coef, skipna)
            _finish(spread, skill, cnt, fair, ob)
            if use_net and skipna:  # rescore the points a NaN member made NaN, dropping it
                redo = np.flatnonzero(np.isnan(ob))
                redo = redo[~np.isnan(yb[redo])]
                if redo.size:
                    buf = _grow(buf, redo.size)
                    spread, skill, cnt = _block_sort(rows_in[:, redo], yb[redo], buf, coef, True)
                    ob[redo] = _finish(spread, skill, cnt, fair, skill)
        out[np.isnan(y)] = np.nan  # also when every member is NaN and skill came out 0/0
    return out.reshape(shape)


@torch_path("crps_ensemble")
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
    Tensors that require grad or live on a GPU are scored in torch (:mod:`sciffusion.metrics.torch_scores`):
    same keywords, result on their device with gradients.
    """
    from ._core import as_dataarray

    if any(isinstance(a, (xr.DataArray, xr.Dataset)) for a in (mu, sigma, observation)):
        score = xr.apply_ufunc(_crps_gaussian_values, mu, sigma, observation, dask="allowed")
        return reduce(score if isinstance(score, xr.Dataset) else score.rename("crps"), reduce_dims, weights)
    if wants_torch(mu, sigma, observation):  # gradients / GPU: score in torch, tensor out
        from .torch_scores import crps_gaussian as _torch_crps_gaussian

        return _torch_crps_gaussian(mu, sigma, observation, reduce_dims=reduce_dims, weights=weights)
    obs, conv = as_dataarray(observation, "observation")
    from ._core import _to_numpy

    mu_np, sig_np = _to_numpy(mu), _to_numpy(sigma)
    score = xr.DataArray(_crps_gaussian_values(mu_np, sig_np, obs.values), dims=obs.dims)
    return conv.back(reduce(score, conv.dims(reduce_dims), conv.weights(weights)))
