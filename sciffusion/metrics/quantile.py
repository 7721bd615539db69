"""Quantile (pinball) score and interval score, for quantile forecasts or ensembles.

Quantile score of a forecast quantile q at level alpha (Koenker & Bassett 1978; Gneiting 2011,
Theorem 9), consistent for the alpha-quantile:

    QS_alpha(q, y) = (1{y < q} - alpha) (q - y).

Interval score of a central (1 - alpha) prediction interval [l, u] (Gneiting & Raftery 2007,
eq. 43), proper for the alpha/2 and 1 - alpha/2 quantiles:

    IS_alpha(l, u, y) = (u - l) + (2/alpha) (l - y) 1{y < l} + (2/alpha) (y - u) 1{y > u}
                      = (2/alpha) (QS_{alpha/2}(l, y) + QS_{1-alpha/2}(u, y)).

From an ensemble the quantiles are the members' empirical quantiles, ``np.quantile(members,
level, method=method)``; the default ``method="linear"`` is Hyndman & Fan's type 7 (R's default):
position h = (M - 1) alpha in the sorted members, interpolated linearly.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import xarray as xr

from ._core import as_dataarray, check_aligned, float_dtype, metric, reduce
from .twcrps import check_order

QUANTILE = "quantile"


def _levels(alpha: Any, name: str = "alpha") -> np.ndarray:
    """Quantile levels as a float array (0-d or 1-d), each strictly inside (0, 1)."""
    if alpha is None:
        raise ValueError(f"{name} (the quantile level or levels) is required")
    a = np.asarray(alpha.values if isinstance(alpha, xr.DataArray) else alpha, dtype=float)
    if a.ndim > 1:
        raise ValueError(f"{name} must be a scalar or a 1-D sequence of levels")
    if a.size == 0 or not np.all((a > 0) & (a < 1)):
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {a.tolist()}")
    return a


def _pinball(q: xr.DataArray, y: xr.DataArray, alpha) -> xr.DataArray:
    """(1{y < q} - alpha)(q - y), written as max((1 - alpha) d, -alpha d) with d = q - y."""
    d = q - y
    return np.maximum((1 - alpha) * d, -alpha * d)


def ensemble_quantiles(forecast: xr.DataArray, levels: np.ndarray, member_dim, method: str,
                       skipna: bool, dtype: np.dtype) -> xr.DataArray:
    """Empirical quantiles of the members (NaN members skipped if ``skipna``; none valid: NaN).
    A 1-D ``levels`` gives a ``quantile`` dim (with the levels as coordinate), a scalar none."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        q = forecast.quantile(levels, dim=member_dim, method=method, skipna=skipna)
    return (q.drop_vars(QUANTILE) if levels.ndim == 0 else q).astype(dtype)


@metric
def _qs_ensemble(forecast, observation, levels, *, member_dim, reduce_dims, weights, method,
                 skipna, dtype):
    dt = float_dtype(forecast, dtype=dtype)
    q = ensemble_quantiles(forecast, levels, member_dim, method, skipna, dt)
    alpha = dt.type(levels) if levels.ndim == 0 else q[QUANTILE].astype(dt)
    score = _pinball(q, observation.astype(dt), alpha)
    if QUANTILE in score.dims:
        score = score.transpose(..., QUANTILE)
    return reduce(score.rename("quantile_score"), reduce_dims, weights)


@metric
def _qs_quantiles(forecast, observation, alpha, *, member_dim, reduce_dims, weights, dtype):
    dt = float_dtype(forecast, dtype=dtype)
    if alpha is None and member_dim in forecast.coords:
        alpha = forecast[member_dim]
    if alpha is None:
        raise ValueError(f"alpha (the quantile levels along {member_dim!r}) is required: the forecast "
                         f"has no coordinate {member_dim!r} giving them")
    levels = np.atleast_1d(_levels(alpha))
    if levels.size != forecast.sizes[member_dim]:
        raise ValueError(f"alpha has {levels.size} levels but the forecast's quantile dimension "
                         f"{member_dim!r} has size {forecast.sizes[member_dim]}")
    a = xr.DataArray(levels.astype(dt), dims=member_dim)
    score = _pinball(forecast.astype(dt), observation.astype(dt), a).transpose(..., member_dim)
    return reduce(score.rename("quantile_score"), reduce_dims, weights)


def quantile_score(forecast, observation, alpha=None, *, member_dim="member", quantile_dim=None,
                   method="linear", reduce_dims=None, weights=None, skipna=True, dtype=None):
    """Quantile (pinball) score QS_alpha(q, y) = (1{y < q} - alpha)(q - y), of an ensemble or of
    quantile forecasts (Koenker & Bassett 1978; Gneiting 2011, JASA 106, 746, Theorem 9).

    Two kinds of forecast:

    * an ensemble (``quantile_dim=None``, the default): q is the members' empirical quantile at
      level ``alpha``, ``np.quantile(members, alpha, method=method)`` (``"linear"``: Hyndman &
      Fan type 7). A scalar ``alpha`` scores one level; a sequence adds a ``quantile`` dimension
      (the last axis for numpy/torch). NaN members are skipped unless ``skipna=False``.
    * quantile forecasts (``quantile_dim=`` the dimension, or for numpy/torch the axis, that
      holds them): the levels are ``alpha`` (one per entry along that dim) or, for xarray, that
      dim's coordinate. The score keeps that dimension (as the last axis for numpy/torch).

    Averaged over the levels, 2 QS approximates the CRPS (which is 2 times the integral of QS over
    alpha in (0, 1)). A NaN observation or forecast quantile gives NaN. ``member_dim``,
    ``reduce_dims``, ``weights`` and ``dtype`` are as for
    :func:`~sciffusion.metrics.crps_ensemble`.
    """
    if quantile_dim is None:
        return _qs_ensemble(forecast, observation, _levels(alpha), member_dim=member_dim,
                            reduce_dims=reduce_dims, weights=weights, method=method, skipna=skipna,
                            dtype=dtype)
    if isinstance(forecast, (xr.DataArray, xr.Dataset)) and quantile_dim not in forecast.dims:
        raise ValueError(f"forecast has no quantile dimension {quantile_dim!r}; its dims are "
                         f"{tuple(forecast.dims)}. Pass quantile_dim=... to name it.")
    return _qs_quantiles(forecast, observation, alpha, member_dim=quantile_dim,
                         reduce_dims=reduce_dims, weights=weights, dtype=dtype)


def _interval(lower, upper, y, alpha: float, components: bool):
    under = np.maximum(y - upper, 0) * (2 / alpha)  # observation above the interval
    over = np.maximum(lower - y, 0) * (2 / alpha)
    width = upper - lower
    total = (width + over + under).rename("interval_score")
    if not components:
        return total
    return xr.Dataset({"interval_score": total, "width": width, "overprediction": over,
                       "underprediction": under})


def _check_alpha(alpha) -> float:
    a = _levels(alpha)
    if a.ndim:
        raise ValueError("alpha must be a single level (the interval's miscoverage, e.g. 0.1)")
    return float(a)


def interval_score(lower, upper, observation, *, alpha, reduce_dims=None, weights=None,
                   components=False):
    """Interval score of the central (1 - alpha) prediction interval [lower, upper]
    (Gneiting & Raftery 2007, JASA 102, 359, eq. 43):

        IS = (u - l) + (2/alpha) (l - y) 1{y < l} + (2/alpha) (y - u) 1{y > u}.

    ``alpha`` is the miscoverage (0.1 for a 90% interval, from the 5% and 95% quantiles; scores'
    ``interval_range`` is 1 - alpha). ``lower``, ``upper`` and ``observation`` are DataArrays
    (eager or dask) or numpy/torch arrays of one shape; the result has the type of ``lower``.
    ``lower > upper`` anywhere is refused (checked for eager inputs). With ``components=True`` the
    result is a Dataset (a dict for numpy/torch) of ``interval_score`` and its ``width``,
    ``overprediction`` (y below the interval) and ``underprediction`` (y above) terms. NaN in any
    input gives NaN at that point. ``reduce_dims`` and ``weights`` as for every metric.
    """
    a = _check_alpha(alpha)
    if isinstance(lower, xr.Dataset):  # variable by variable; components get the name as prefix
        out = {}
        for k, v in lower.data_vars.items():
            y = observation[k] if isinstance(observation, xr.Dataset) else observation
            res = interval_score(v, upper[k], y, alpha=a, reduce_dims=reduce_dims, weights=weights,
                                 components=components)
            out.update({f"{k}_{c}": r for c, r in res.data_vars.items()} if components else {k: res})
        return xr.Dataset(out)
    lo, conv = as_dataarray(lower, "lower")
    if conv.kind == "xarray":
        hi, y = upper, observation
    else:
        hi, _ = as_dataarray(upper, "upper")
        y, _ = as_dataarray(observation, "observation")
        if not lo.shape == hi.shape == y.shape:
            raise ValueError(f"lower, upper and observation must have one shape, got {lo.shape}, "
                             f"{hi.shape} and {y.shape}")
    check_aligned(lo, hi, ("lower", "upper"))
    check_aligned(lo, y, ("lower", "observation"))
    check_order(lo, hi)
    score = _interval(lo, hi, y, a, components)
    return conv.back(reduce(score, conv.dims(reduce_dims), conv.weights(weights)))


@metric
def _is_ensemble(forecast, observation, alpha, *, member_dim, reduce_dims, weights, method, skipna,
                 components, dtype):
    dt = float_dtype(forecast, dtype=dtype)
    q = ensemble_quantiles(forecast, np.array([alpha / 2, 1 - alpha / 2]), member_dim, method, skipna, dt)
    lo, hi = (q.isel({QUANTILE: i}, drop=True) for i in (0, 1))
    score = _interval(lo, hi, observation.astype(dt), alpha, components)
    return reduce(score, reduce_dims, weights)


def interval_score_ensemble(forecast, observation, *, alpha, member_dim="member", method="linear",
                            reduce_dims=None, weights=None, skipna=True, components=False,
                            dtype=None):
    """Interval score (see :func:`interval_score`) of the ensemble's central (1 - alpha) interval,
    from the members' empirical alpha/2 and 1 - alpha/2 quantiles
    (``np.quantile(members, ..., method=method)``, default type 7). NaN members are skipped unless
    ``skipna=False``; the keyword shape is that of :func:`~sciffusion.metrics.crps_ensemble`.
    """
    return _is_ensemble(forecast, observation, _check_alpha(alpha), member_dim=member_dim,
                        reduce_dims=reduce_dims, weights=weights, method=method, skipna=skipna,
                        components=components, dtype=dtype)
