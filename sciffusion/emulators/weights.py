"""Grid-point weights of an ensemble emulator: the latitude weighting of its loss and its scores.

On a latitude-longitude grid a grid point covers an area proportional to ``cos(latitude)``, so
an unweighted mean over the grid counts the polar rows far more than they weigh on the sphere.
``EnsembleEmulator.fit(ds, weights=...)`` takes

* ``"cos"`` or ``"area"``: :func:`sciffusion.metrics.latitude_weights` of the data's latitude
  coordinate (``lat`` or ``latitude``, one of the grid dims);
* an :class:`xarray.DataArray` over some of the grid dims (e.g. the result of
  ``latitude_weights``, or a land-sea fraction); it is broadcast over the others;

and normalises them to mean 1 over the grid. The diffusion loss of each training pair is then
``sum_i w_i err_i^2 / sum_i w_i`` over grid points ``i`` (and channels), the ``mask`` term of
:func:`sciffusion.diffusion.edm_loss`. The weights are kept, compactly (over their own dims), in the
emulator's coder and so in its checkpoint. :func:`resolve` gives the same weights for scoring
(:func:`~sciffusion.emulators.ensemble_skill`, :func:`~sciffusion.emulators.calibrate_spread`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

KINDS = ("cos", "area")
LAT_NAMES = ("lat", "latitude")


def latitude_dim(obj: xr.Dataset | xr.DataArray, grid_dims: Sequence[str] | None = None) -> str:
    """The latitude coordinate of ``obj`` (``lat`` or ``latitude``; among ``grid_dims`` when given)."""
    dims = list(obj.dims) if grid_dims is None else list(grid_dims)
    found = [d for d in LAT_NAMES if d in dims and d in obj.coords]
    if not found:
        raise ValueError(f"latitude weights need a latitude coordinate named one of {LAT_NAMES} among the grid dims "
                         f"{dims}; rename yours (ds.rename(...)) or pass weights= as a DataArray")
    return found[0]


def resolve(weights, data: xr.Dataset | xr.DataArray, grid_dims: Sequence[str] | None = None) -> xr.DataArray | None:
    """Weights over (some of) ``grid_dims`` of ``data``, mean 1 over the grid, or None.

    ``weights``: None, ``"cos"``/``"area"`` (latitude weights of ``data``'s latitude coordinate) or a
    DataArray whose dims are grid dims of ``data`` (reordered to ``data``'s coordinates when they hold
    the same values in another order, e.g. ascending vs descending latitudes). ValueError names a
    dim that is not a grid dim, a coordinate that differs, NaN, negative or all-zero weights.
    """
    if weights is None:
        return None
    import sciffusion.metrics as sm

    grid_dims = [str(d) for d in (data.dims if grid_dims is None else grid_dims)]
    if isinstance(weights, str):
        if weights not in KINDS:
            raise ValueError(f"weights must be None, a DataArray over the grid dims or one of {KINDS}; got {weights!r}")
        lat = latitude_dim(data, grid_dims)
        weights = sm.latitude_weights(data[lat], kind=weights)
    if not isinstance(weights, xr.DataArray):
        raise TypeError(f"weights must be None, {KINDS[0]!r}, {KINDS[1]!r} or an xarray.DataArray over the grid dims "
                        f"{grid_dims}; got {type(weights).__name__}")
    extra = [str(d) for d in weights.dims if d not in grid_dims]
    if extra:
        raise ValueError(f"weights have dim(s) {extra} that are not grid dims of the data (grid dims: {grid_dims}); "
                         "weights are per grid point, e.g. over the latitude only")
    w = weights.astype(np.float64).reset_coords(drop=True)
    for d in w.dims:
        if w.sizes[d] != data.sizes[d]:
            raise ValueError(f"weights have {w.sizes[d]} entries along {d!r}, the data {data.sizes[d]}")
        if d in w.coords and d in data.coords:
            want = np.asarray(data[d].values)
            if not np.array_equal(np.asarray(w[d].values), want):
                try:
                    w = w.sel({d: want})
                except KeyError:
                    raise ValueError(f"the weights' {d!r} coordinate differs from the data's "
                                     f"({np.asarray(w[d].values)[:3]}... vs {want[:3]}...)") from None
    w = w.transpose(*[d for d in grid_dims if d in w.dims])
    w = w.assign_coords({d: data[d].values for d in w.dims if d in data.coords})  # the data's index, exactly
    values = w.values
    if not np.isfinite(values).all() or (values < 0).any() or not (values > 0).any():
        raise ValueError("weights must be finite, non-negative and not all zero")
    return w / float(values.mean())  # a weight over some grid dims has the same mean over the whole grid


def to_spec(w: xr.DataArray | None) -> dict | None:
    """JSON form ``{"dims": [...], "values": nested list}`` (the weights over their own dims only)."""
    return None if w is None else {"dims": [str(d) for d in w.dims], "values": np.asarray(w.values, np.float64).tolist()}


def from_spec(spec: dict | None, grid_coords: dict) -> xr.DataArray | None:
    """The DataArray of :func:`to_spec`'s output, with the training grid's coordinates where known."""
    if spec is None:
        return None
    coords = {d: grid_coords[d] for d in spec["dims"] if grid_coords.get(d) is not None}
    return xr.DataArray(np.asarray(spec["values"], dtype=np.float64), dims=spec["dims"], coords=coords, name="weights")


def grid_tensor(spec: dict, grid_dims: Sequence[str], grid_sizes: dict) -> torch.Tensor:
    """``(1, 1, *grid)`` float32 weights broadcast over the whole grid (a loss mask for ``(B, C, *grid)``)."""
    values = torch.tensor(spec["values"], dtype=torch.float32)
    shape = [grid_sizes[d] if d in spec["dims"] else 1 for d in grid_dims]
    order = [list(spec["dims"]).index(d) for d in grid_dims if d in spec["dims"]]
    return values.permute(*order).reshape(shape).expand(*[grid_sizes[d] for d in grid_dims])[None, None]
