"""Scores of the forecast probability of exceeding a threshold: Brier score and reliability."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ._core import metric, reduce


def _threshold(threshold) -> xr.DataArray | float:
    if isinstance(threshold, xr.DataArray):
        return threshold
    t = np.asarray(threshold, dtype=float)
    if t.ndim == 0:
        return float(t)
    if t.ndim > 1:
        raise ValueError("threshold must be a scalar, a 1-D sequence or a DataArray")
    return xr.DataArray(t, dims="threshold", coords={"threshold": t})


def exceedance(forecast, observation, threshold, member_dim, skipna=True):
    """Forecast probability p = #{x_i > t} / M_p, observed outcome o = 1[y > t] (NaN where y is
    NaN), and the per-point member count M_p (NaN members skipped unless ``skipna=False``)."""
    t = _threshold(threshold)
    count = forecast.count(member_dim)
    p = (forecast > t).sum(member_dim) / count
    if not skipna:
        p = p.where(count == forecast.sizes[member_dim])
    o = (observation > t).astype(float).where(observation.notnull())
    return p, o, count


@metric
def brier_score(forecast, observation, threshold, *, member_dim="member", reduce_dims=None,
                weights=None, fair=False, skipna=True):
    """Brier score of the event ``value > threshold``: BS = (p - o)^2 with p the fraction of
    members above the threshold and o = 1[y > threshold] (Brier 1950).

    ``fair=True`` subtracts the finite-ensemble bias, BS_fair = (p - o)^2 - p (1 - p) / (M - 1)
    (Ferro 2014, QJRMS 140, 1917, eq. 8); it is NaN with fewer than two members. Integrated over
    all thresholds, the standard (fair) Brier score gives the standard (fair) CRPS.
    ``threshold`` may be a scalar or a sequence (adds a ``threshold`` dimension).
    """
    p, o, m = exceedance(forecast, observation, threshold, member_dim, skipna)
    bs = (p - o) ** 2
    if fair:
        bs = bs - p * (1 - p) / (m - 1).where(m > 1)
    return reduce(bs.rename("brier_score"), reduce_dims, weights)


@metric
def reliability(forecast, observation, threshold, *, member_dim="member", reduce_dims=None,
                weights=None, bins=10, skipna=True):
    """Reliability diagram data for the event ``value > threshold``.

    The forecast probability p (fraction of members above the threshold) is binned into
    ``bins`` equal bins on [0, 1] (or the given bin edges; the last bin includes 1). For each bin,
    over ``reduce_dims`` (weighted by ``weights``):

        count                 sum of weights of the points in the bin
        forecast_probability  mean p in the bin
        observed_frequency    mean 1[y > threshold] in the bin (NaN for an empty bin)

    Returns a Dataset with those three variables along a new ``bin`` dimension (coordinates
    ``bin_lower``, ``bin_upper``); for numpy/torch input a dict of arrays. A perfectly reliable
    forecast has observed_frequency = forecast_probability (Wilks 2011, sect. 8.4.4).
    """
    edges = np.linspace(0.0, 1.0, bins + 1) if np.ndim(bins) == 0 else np.asarray(bins, float)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("bins must be a positive integer or increasing bin edges")
    p, o, _ = exceedance(forecast, observation, threshold, member_dim, skipna)
    valid = p.notnull() & o.notnull()
    index = xr.apply_ufunc(
        lambda v: np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2),
        p.fillna(0.0), dask="parallelized", output_dtypes=[np.int64],
    )
    b = xr.DataArray(np.arange(len(edges) - 1), dims="bin")
    inside = ((index == b) & valid).astype(float)
    count = reduce(inside, reduce_dims, weights, how="sum")
    fsum = reduce(inside * p.fillna(0.0), reduce_dims, weights, how="sum")
    osum = reduce(inside * o.fillna(0.0), reduce_dims, weights, how="sum")
    out = xr.Dataset({
        "forecast_probability": fsum / count.where(count > 0),
        "observed_frequency": osum / count.where(count > 0),
        "count": count,
    })
    out = out.assign_coords(bin_lower=("bin", edges[:-1]), bin_upper=("bin", edges[1:]))
    dims = [d for d in out["count"].dims if d != "bin"] + ["bin"]
    return out.transpose(*dims, ...)
