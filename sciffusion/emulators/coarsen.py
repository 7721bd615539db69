"""Block means and interpolation baselines for downscaling, on xarray grids with NaN masks.

* :func:`coarsen` - block means over the valid (non-NaN) points of each ``factor x factor``
  block (a block with no valid point is NaN), with block-mean coordinates and the attributes
  kept: the coarse fields a downscaling model is trained to invert.
* :func:`upsample` - the interpolation baselines (``"bicubic"``, ``"bilinear"``, ``"nearest"``)
  back to the fine grid. They are mask-aware: missing coarse cells are first filled from their
  valid neighbours (:func:`fill_missing`), so a fine ocean point next to a coast is
  interpolated from ocean values instead of being lost, and periodic along a dimension when
  asked or when it is a global longitude.

Cells are centred: fine point ``j`` of coarse block ``k`` sits at coarse-index position
``k + (j + 1/2) / factor - 1/2``, the convention of ``torch.nn.functional.interpolate`` with
``align_corners=False``; so ``coarsen(upsample(c, f, method="nearest"), f) == c``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

METHODS = ("bicubic", "bilinear", "nearest")


def _first_gridded(obj) -> xr.DataArray:
    if isinstance(obj, xr.DataArray):
        return obj
    arrays = [obj[v] for v in obj.data_vars if obj[v].ndim >= 2]
    if not arrays:
        raise ValueError("no variable of the dataset has two or more dimensions to treat as a grid; pass grid_dims=")
    return arrays[0]


def grid_dims_of(obj, grid_dims=None) -> list[str]:
    """``grid_dims`` as a list of names (default: the last two dims of the first gridded variable), checked."""
    if grid_dims is None:
        grid_dims = list(_first_gridded(obj).dims[-2:])
    grid_dims = [grid_dims] if isinstance(grid_dims, str) else [str(d) for d in grid_dims]
    missing = [d for d in grid_dims if d not in obj.dims]
    if missing:
        raise ValueError(f"grid dimension(s) {missing} not found; available dimensions: {dict(obj.sizes)}")
    return grid_dims


def _factors(factor, grid_dims: Sequence[str]) -> dict[str, int]:
    if isinstance(factor, Mapping):
        f = {str(d): int(factor[d]) for d in grid_dims}
    elif np.ndim(factor) == 0:
        f = {d: int(factor) for d in grid_dims}
    else:
        if len(factor) != len(grid_dims):
            raise ValueError(f"got {len(factor)} factors for grid dims {list(grid_dims)}")
        f = {d: int(k) for d, k in zip(grid_dims, factor)}
    bad = {d: k for d, k in f.items() if k < 1}
    if bad:
        raise ValueError(f"coarsening factors must be positive integers, got {bad}")
    return f


def coarsen(fine: xr.Dataset | xr.DataArray, factor: int | Sequence[int] | Mapping[str, int], *,
            grid_dims=None) -> xr.Dataset | xr.DataArray:
    """Block means of ``fine`` over ``factor x factor`` blocks of its grid, NaN-aware.

    Each coarse cell is the mean of the valid (non-NaN) fine points of its block, NaN when the
    block has none (land). Coordinates along the grid dims become block means; attributes of the
    variables, coordinates and dataset are kept; variables without the grid dims pass through.

    Args:
        fine: Dataset or DataArray on ``(..., *grid_dims)``.
        factor: one integer for every grid dim, one per grid dim, or ``{dim: factor}``.
        grid_dims: the dims to coarsen (default: the last two dims of the first gridded variable).

    Raises:
        ValueError: naming the dimension whose size is not divisible by the factor.
    """
    grid_dims = grid_dims_of(fine, grid_dims)
    factors = _factors(factor, grid_dims)
    for d, k in factors.items():
        if fine.sizes[d] % k:
            raise ValueError(f"cannot coarsen by {k}: dimension {d!r} has size {fine.sizes[d]}, which is not "
                             f"divisible by {k}; crop or pad the grid to a multiple of {k}")
    return _per_variable(fine, grid_dims, lambda name, v: _coarsen_array(v, factors),
                         lambda v: any(d in v.dims for d in grid_dims))


def _per_variable(obj, grid_dims, fn, gridded):
    """``fn(name, da)`` of a DataArray, or of each variable of a Dataset for which ``gridded(da)`` holds (the
    others pass through), keeping the dataset's attributes and its coordinates not on the grid (e.g. time)."""
    if isinstance(obj, xr.DataArray):
        return fn(obj.name, obj)
    ds = xr.Dataset({name: fn(name, v) if gridded(v) else v for name, v in obj.data_vars.items()},
                    attrs=dict(obj.attrs))
    for name, c in obj.coords.items():
        if not any(d in c.dims for d in grid_dims) and name not in ds.coords:
            ds = ds.assign_coords({name: c})
    return ds


def _coarsen_array(da: xr.DataArray, factors: dict[str, int]) -> xr.DataArray:
    window = {d: k for d, k in factors.items() if d in da.dims}
    with xr.set_options(keep_attrs=True):
        total = da.fillna(0).coarsen(window, boundary="exact", coord_func="mean").sum()
        count = da.notnull().coarsen(window, boundary="exact", coord_func="mean").sum()
        out = total / count.where(count > 0)  # same block-mean coordinates: aligns exactly, stays lazy
    dtype = da.dtype if da.dtype.kind == "f" else np.float64
    out = out.astype(dtype)
    out.attrs = dict(da.attrs)
    for name in out.coords:
        if name in da.coords:
            out[name].attrs = dict(da[name].attrs)
    return out.rename(da.name)


# ----------------------------------------------------------------------------- periodicity
def is_global_longitude(coord: xr.DataArray | None) -> bool:
    """True for a 1-D longitude coordinate (by name, ``standard_name`` or ``units``) whose regular
    spacing times its length covers 360 degrees."""
    if coord is None or coord.ndim != 1 or coord.size < 2 or coord.dtype.kind not in "fiu":
        return False
    name = str(coord.name).lower()
    attrs = coord.attrs
    lon = ("lon" in name or attrs.get("standard_name") == "longitude"
           or str(attrs.get("units", "")).lower() in ("degrees_east", "degree_east", "degrees_e"))
    if not lon:
        return False
    v = np.asarray(coord.values, dtype=float)
    step = float(np.median(np.abs(np.diff(v))))
    return step > 0 and abs(step * v.size - 360.0) < 0.5 * step


def periodic_dims(obj, grid_dims: Sequence[str], periodic=None) -> list[str]:
    """Which of ``grid_dims`` are periodic: ``periodic`` True (all), False (none), a dim name or a
    list of names, or None (auto: the global longitudes)."""
    if periodic is None:
        return [d for d in grid_dims if d in obj.coords and is_global_longitude(obj[d])]
    if periodic is True:
        return list(grid_dims)
    if periodic is False:
        return []
    names = [periodic] if isinstance(periodic, str) else [str(p) for p in periodic]
    unknown = [p for p in names if p not in grid_dims]
    if unknown:
        raise ValueError(f"periodic dim(s) {unknown} are not grid dims {list(grid_dims)}")
    return names


# ----------------------------------------------------------------------------- tensors
def _pad(x: torch.Tensor, p: int, periodic: tuple[bool, bool], mode: str) -> torch.Tensor:
    """Pad the last two axes of ``x (N, 1, H, W)`` by ``p``: circular on periodic axes, else ``mode``."""
    for axis, per in ((-1, periodic[1]), (-2, periodic[0])):
        pad = [p, p, 0, 0] if axis == -1 else [0, 0, p, p]
        x = F.pad(x, pad, mode="circular" if per else mode)  # ("constant": zeros)
    return x


def fill_missing(x: torch.Tensor, periodic: tuple[bool, bool] = (False, False), max_iter: int | None = None) -> torch.Tensor:
    """Fill NaN points of ``x (..., H, W)`` from their valid neighbours, ring by ring.

    Each pass sets every missing point that has valid points among its 8 neighbours to their
    mean (neighbours across a periodic edge count), until nothing is missing. Slices with no
    valid point at all become 0. Valid points are never changed.
    """
    shape = x.shape
    x = x.reshape(-1, 1, *shape[-2:]).clone()
    valid = torch.isfinite(x)
    if bool(valid.all()):
        return x.reshape(shape)
    empty = ~valid.flatten(1).any(1)
    x[empty] = 0.0
    valid[empty] = True
    x = torch.where(valid, x, torch.zeros_like(x))
    kernel = torch.ones(1, 1, 3, 3, dtype=x.dtype)
    for _ in range(max_iter or sum(shape[-2:])):
        if bool(valid.all()):
            break
        v = valid.to(x.dtype)
        total = F.conv2d(_pad(x * v, 1, periodic, "constant"), kernel)
        count = F.conv2d(_pad(v, 1, periodic, "constant"), kernel)
        new = ~valid & (count > 0)
        x = torch.where(new, total / count.clamp_min(1), x)
        valid = valid | new
    return x.reshape(shape)


def upsample_tensor(x: torch.Tensor, factor: int | Sequence[int], *, method: str = "bicubic",
                    periodic: tuple[bool, bool] = (False, False)) -> torch.Tensor:
    """Interpolate ``x (..., h, w)`` (NaN allowed, filled first) to ``(..., h * f0, w * f1)``.

    Computed in float64, returned in ``x``'s dtype; no NaN in the output (mask it afterwards).
    Non-periodic edges extend the edge values (PyTorch's clamping).
    """
    if method not in METHODS:
        raise ValueError(f"unknown upsampling method {method!r}; choose one of {METHODS}")
    f = (int(factor), int(factor)) if np.ndim(factor) == 0 else tuple(int(k) for k in factor)
    shape = x.shape
    z = fill_missing(x.to(torch.float64), periodic).reshape(-1, 1, *shape[-2:])
    p = 2 if any(periodic) else 0
    if p:
        z = _pad(z, p, periodic, "replicate")
    kwargs = {} if method == "nearest" else {"align_corners": False}
    z = F.interpolate(z, scale_factor=f, mode=method, **kwargs)
    if p:
        z = z[..., p * f[0]: (p + shape[-2]) * f[0], p * f[1]: (p + shape[-1]) * f[1]]
    return z.reshape(*shape[:-2], shape[-2] * f[0], shape[-1] * f[1]).to(x.dtype)


def fine_coordinate(coarse: xr.DataArray, factor: int) -> np.ndarray:
    """Cell-centre coordinates of the fine grid from block-mean coordinates (inverse of the block
    mean for a regular grid; the local spacing is used for an irregular one)."""
    c = np.asarray(coarse.values, dtype=float)
    if c.size < 2:
        return np.repeat(c, factor)
    step = np.gradient(c)
    offsets = (np.arange(factor) + 0.5) / factor - 0.5
    return (c[:, None] + step[:, None] * offsets[None, :]).reshape(-1)


def upsample(coarse: xr.Dataset | xr.DataArray, factor: int | Sequence[int], *, method: str = "bicubic",
             grid_dims=None, periodic=None, coords: Mapping[Hashable, np.ndarray] | None = None,
             mask=None) -> xr.Dataset | xr.DataArray:
    """Interpolate coarse fields to a grid ``factor`` times finer (the downscaling baselines).

    Args:
        coarse: Dataset or DataArray on ``(..., *grid_dims)`` (two grid dims), NaN where missing.
        factor: refinement factor (one integer, or one per grid dim).
        method: ``"bicubic"`` (Keys, a = -0.75), ``"bilinear"`` or ``"nearest"`` (block copies).
        grid_dims: the two grid dims (default: the last two dims of the first gridded variable).
        periodic: True, False, a dim name or list of names, or None (auto: global longitudes
            wrap around).
        coords: fine-grid coordinate values by dim (default: cell centres reconstructed from
            the block-mean coordinates by :func:`fine_coordinate`).
        mask: where the output is valid on the fine grid (boolean array or DataArray on the grid
            dims, or a Dataset of them by variable); default: NaN where the coarse cell is NaN.

    Missing coarse cells are filled from their valid neighbours before interpolating, so
    valid fine points next to a masked area keep a value.
    """
    grid_dims = grid_dims_of(coarse, grid_dims)
    if len(grid_dims) != 2:
        raise ValueError(f"upsample works on two grid dims, got {grid_dims}")
    f = _factors(factor, grid_dims)
    per = periodic_dims(coarse, grid_dims, periodic)
    flags = (grid_dims[0] in per, grid_dims[1] in per)
    return _per_variable(coarse, grid_dims, lambda name, v: _upsample_array(
        v, f, method, grid_dims, flags, coords, mask[name] if isinstance(mask, xr.Dataset) else mask),
        lambda v: all(d in v.dims for d in grid_dims))


def _upsample_array(da, f, method, grid_dims, flags, coords, mask) -> xr.DataArray:
    other = [d for d in da.dims if d not in grid_dims]
    da_t = da.transpose(*other, *grid_dims)
    x = torch.from_numpy(np.asarray(da_t.values, dtype=np.float64))
    y = upsample_tensor(x, (f[grid_dims[0]], f[grid_dims[1]]), method=method, periodic=flags).numpy()
    if mask is None:
        missing = np.isnan(da_t.values)
        for axis, d in ((-2, grid_dims[0]), (-1, grid_dims[1])):
            missing = np.repeat(missing, f[d], axis=axis)
        y = np.where(missing, np.nan, y)
    else:
        valid = np.asarray(mask.transpose(*grid_dims).values if isinstance(mask, xr.DataArray) else mask, dtype=bool)
        y = np.where(valid, y, np.nan)
    new_coords = {}
    for d in grid_dims:
        if coords is not None and d in coords:
            values = np.asarray(coords[d])
        elif d in da.coords:
            values = fine_coordinate(da[d], f[d])
        else:
            continue
        new_coords[d] = xr.Variable(d, values, dict(da[d].attrs) if d in da.coords else {})
    for name, c in da_t.coords.items():
        if not any(d in c.dims for d in grid_dims):
            new_coords[name] = c.variable
    dtype = da.dtype if da.dtype.kind == "f" else np.float64
    out = xr.DataArray(y.astype(dtype), dims=da_t.dims, coords=new_coords, attrs=dict(da.attrs), name=da.name)
    return out.transpose(*da.dims)
