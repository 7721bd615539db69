"""Threshold-weighted CRPS of an ensemble: the CRPS restricted to the outcomes of interest.

For a weight w(z) >= 0 the threshold-weighted CRPS (Gneiting & Ranjan 2011) is

    twCRPS(F, y) = integral (F(z) - 1{y <= z})^2 w(z) dz.

With a chaining function v, v' = w, it is the CRPS of the forecast and the observation mapped
through v (Allen, Ginsbourger & Ziegel 2023, eq. 14), so for members x_1..x_M

    twCRPS = (1/M) sum_i |v(x_i) - v(y)| - (1/(2K)) sum_ij |v(x_i) - v(x_j)|,

K = M^2 (standard) or M(M - 1) (fair). The weights used here are indicators:

    upper tail   w(z) = 1{z > t}       v(z) = max(z, t)
    lower tail   w(z) = 1{z < t}       v(z) = min(z, t)
    interval     w(z) = 1{a < z < b}   v(z) = min(max(z, a), b)

so the score is :func:`~sciffusion.metrics.crps_ensemble` of the clipped ensemble and observation,
and inherits its speed, its NaN rules and its dask laziness. Because the weights of the two tails at
a threshold add up to one, twCRPS_upper(t) + twCRPS_lower(t) = CRPS (standard and fair alike).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ._core import _is_torch, _to_numpy, check_aligned, float_dtype, metric, reduce
from .crps import crps_ensemble


def bound_array(value: Any, name: str, like: xr.DataArray, dtype: np.dtype) -> float | xr.DataArray | None:
    """A threshold as a float or a DataArray that broadcasts against ``like`` (the observation).

    A DataArray broadcasts by dimension name (its coordinates must match ``like``'s; a dim that
    ``like`` lacks, e.g. ``threshold``, adds that dim to the score). A numpy/torch array broadcasts
    against the trailing dims of ``like`` (numpy broadcasting)."""
    if value is None:
        return None
    if isinstance(value, xr.DataArray):
        check_aligned(like, value, ("observation", name))
        return value.astype(dtype)
    arr = _to_numpy(value) if _is_torch(value) else np.asarray(value)
    if arr.ndim == 0:
        return float(arr)
    if arr.ndim > like.ndim:
        raise ValueError(f"{name} has {arr.ndim} dims but the observation has {like.ndim}; pass a "
                         f"DataArray to add a dimension")
    try:
        np.broadcast_shapes(arr.shape, like.shape[like.ndim - arr.ndim:])
    except ValueError:
        raise ValueError(f"{name} of shape {arr.shape} does not broadcast against the observation's "
                         f"trailing shape {like.shape[like.ndim - arr.ndim:]}") from None
    return xr.DataArray(arr.astype(dtype), dims=like.dims[like.ndim - arr.ndim:])


def check_order(lower: Any, upper: Any, names: tuple[str, str] = ("lower", "upper")) -> None:
    """Raise if ``lower > upper`` anywhere (eager values only; lazy dask bounds are not checked)."""
    if lower is None or upper is None:
        return
    bad = np.greater(lower, upper)
    if isinstance(bad, xr.DataArray):
        if bad.chunks is not None:
            return
        bad = bad.values
    if np.any(bad):
        raise ValueError(f"{names[0]} must not exceed {names[1]} (it does at {int(np.sum(bad))} point(s))")


def _chain(x: xr.DataArray, lower, upper) -> xr.DataArray:
    if lower is not None:
        x = np.maximum(x, lower)  # NaN stays NaN
    if upper is not None:
        x = np.minimum(x, upper)
    return x


@metric
def _twcrps(forecast, observation, lower, upper, *, member_dim, reduce_dims, weights, fair, skipna, dtype):
    dt = float_dtype(forecast, dtype=dtype)
    lo = bound_array(lower, "lower" if upper is not None else "threshold", observation, dt)
    hi = bound_array(upper, "upper" if lower is not None else "threshold", observation, dt)
    check_order(lo, hi)
    score = crps_ensemble(_chain(forecast, lo, hi), _chain(observation, lo, hi), member_dim=member_dim,
                          fair=fair, skipna=skipna, dtype=dt)
    return reduce(score.rename("twcrps"), reduce_dims, weights)


def twcrps_ensemble(forecast, observation, threshold=None, *, tail="upper", lower=None, upper=None,
                    member_dim="member", fair=False, reduce_dims=None, weights=None, skipna=True,
                    dtype=None):
    """Threshold-weighted ensemble CRPS, standard or fair (Allen, Ginsbourger & Ziegel 2023).

        twCRPS = (1/M) sum_i |v(x_i) - v(y)| - (1/(2K)) sum_ij |v(x_i) - v(x_j)|,
        K = M^2 (standard) or M (M - 1) (``fair=True``),

    with the chaining function v(z) = max(z, t) (``tail="upper"``: weight 1{z > t}),
    v(z) = min(z, t) (``tail="lower"``: weight 1{z < t}) or v(z) = min(max(z, lower), upper)
    (weight 1{lower < z < upper}). It is the CRPS integral restricted to the weighted outcomes, so a
    forecast is judged only on the part of its distribution beyond the threshold (extremes).
    ``threshold=-inf`` (upper tail) gives the plain CRPS, and the two tails at one threshold add up
    to it.

    Args:
        forecast, observation, member_dim, fair, reduce_dims, weights, skipna, dtype: as for
            :func:`~sciffusion.metrics.crps_ensemble` (NaN members are dropped per point; a NaN
            observation, or a NaN threshold, gives NaN).
        threshold: where the tail starts; a scalar, an array broadcasting against the
            observation's trailing axes (numpy/torch) or a DataArray (e.g. a climatological
            quantile per grid point; a dim the observation lacks, such as ``threshold``, adds a
            dimension to the score).
        tail: ``"upper"`` (outcomes above ``threshold``) or ``"lower"`` (below it).
        lower, upper: instead of ``threshold``, the ends of the interval of interest; either one
            may be left out (unbounded). ``lower`` must not exceed ``upper``.

    Returns:
        The score with the type of ``forecast`` (lazy for dask), named ``twcrps``.

    References:
        Gneiting & Ranjan (2011), J. Bus. Econ. Stat. 29, 411; Allen, Ginsbourger & Ziegel (2023),
        SIAM/ASA J. Uncertain. Quantif. 11, 906, doi:10.1137/22M1532184; Allen (2024), J. Stat.
        Softw. 110(8).
    """
    if threshold is not None:
        if lower is not None or upper is not None:
            raise ValueError("give either threshold= (with tail=) or lower=/upper=, not both")
        if tail not in ("upper", "lower"):
            raise ValueError(f"tail must be 'upper' or 'lower', got {tail!r}")
        lower, upper = (threshold, None) if tail == "upper" else (None, threshold)
    elif lower is None and upper is None:
        raise ValueError("twcrps_ensemble needs threshold= (with tail=) or lower= and/or upper=")
    return _twcrps(forecast, observation, lower, upper, member_dim=member_dim, reduce_dims=reduce_dims,
                   weights=weights, fair=fair, skipna=skipna, dtype=dtype)
