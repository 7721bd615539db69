"""Latitude weights for averages over a latitude-longitude grid."""

from __future__ import annotations

import numpy as np
import xarray as xr

_LAT_NAMES = ("lat", "latitude", "nav_lat", "y")


def _find_lat(obj, lat_dim):
    if lat_dim is not None:
        if lat_dim not in obj.coords:
            raise ValueError(f"no latitude coordinate {lat_dim!r}; coords are {list(obj.coords)}")
        return obj[lat_dim]
    for name in _LAT_NAMES:
        if name in obj.coords:
            return obj[name]
    raise ValueError(f"no latitude coordinate found (looked for {_LAT_NAMES}); pass lat_dim=")


def _area_weights(lat: np.ndarray) -> np.ndarray:
    """sin(phi_upper) - sin(phi_lower) with cell edges half-way between centres, clipped at the
    poles (a cell centred on a pole covers a polar cap of half the spacing)."""
    if lat.size == 1:
        return np.ones(1)
    order = np.argsort(lat)
    s = lat[order]
    mid = 0.5 * (s[1:] + s[:-1])
    edges = np.concatenate([[s[0] - (mid[0] - s[0])], mid, [s[-1] + (s[-1] - mid[-1])]])
    edges = np.clip(edges, -90.0, 90.0)
    w = np.diff(np.sin(np.deg2rad(edges)))
    out = np.empty_like(w)
    out[order] = w
    return out


def latitude_weights(lat, kind: str = "area", *, lat_dim=None, normalize: bool = True):
    """Weights proportional to the area a grid row covers on the sphere.

    ``kind="cos"``: w = cos(phi) (the usual approximation, as ``scores.functions.
    create_latitude_weights``). ``kind="area"``: w = sin(phi_+) - sin(phi_-), the exact area
    of the cell between edges half-way between latitudes, clipped at +-90 (WeatherBench 2;
    Rasp et al. 2024, JAMES 16, e2023MS004019, eq. 3). Both are normalised to mean 1 over the
    latitudes unless ``normalize=False``.

    ``lat`` is a 1-D array of latitudes in degrees, or a DataArray/Dataset with a latitude
    coordinate (``lat_dim`` or one of lat, latitude); xarray gives a DataArray along that dim.
    """
    if kind not in ("cos", "area"):
        raise ValueError(f"kind must be 'cos' or 'area', got {kind!r}")
    coord = lat
    if isinstance(lat, (xr.DataArray, xr.Dataset)):
        is_coord = isinstance(lat, xr.DataArray) and lat.ndim == 1 and lat.name == lat.dims[0]
        if lat_dim is not None or not is_coord:
            coord = _find_lat(lat, lat_dim)
    values = np.asarray(coord, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"latitudes must be 1-D, got shape {values.shape}")
    if np.any(np.abs(values) > 90):
        raise ValueError("latitudes must be in degrees within [-90, 90]")
    w = np.cos(np.deg2rad(values)).clip(0.0) if kind == "cos" else _area_weights(values)
    if normalize:
        w = w / w.mean()
    if isinstance(coord, xr.DataArray):
        dim = coord.dims[0]
        return xr.DataArray(w, dims=dim, coords={dim: coord[dim].values}, name="weights")
    return w
