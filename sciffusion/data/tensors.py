"""xarray <-> channel-stacked tensors: variables become channels, sample dims become the batch.

``dataset_to_tensor`` turns variables ``v_1..v_C`` on ``sample_dims + grid_dims`` into a tensor
(N, C, *grid) with N = prod(sample sizes) (C order over ``sample_dims``);
``tensor_to_dataset`` is the inverse and restores coordinates and CF attributes.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

CF_ATTRS = ("units", "long_name", "standard_name", "description", "cell_methods")


def check_variables(ds: xr.Dataset, variables: Sequence[Hashable], role: str = "variable") -> None:
    """Raise ValueError naming any of ``variables`` missing from ``ds`` and listing the rest."""
    missing = [str(v) for v in variables if v not in ds.data_vars]
    if missing:
        raise ValueError(f"{role} {', '.join(map(repr, missing))} not found in dataset; "
                         f"available variables: {', '.join(sorted(map(str, ds.data_vars)))}")


def check_dims(ds: xr.Dataset, dims: Sequence[Hashable], role: str = "dimension") -> None:
    """Raise ValueError naming any of ``dims`` missing from ``ds`` and listing its dims."""
    missing = [str(d) for d in dims if d not in ds.dims]
    if missing:
        raise ValueError(f"{role} {', '.join(map(repr, missing))} not found in dataset; "
                         f"available dimensions: {dict(ds.sizes)}")


def variable_array(ds: xr.Dataset, var: Hashable, sample_dims: Sequence[Hashable],
                   grid_dims: Sequence[Hashable]) -> xr.DataArray:
    """``ds[var]`` broadcast and transposed to ``(*sample_dims, *grid_dims)``.

    A variable without some of the sample dims (e.g. a forcing without ``member``) or grid dims
    is broadcast along them; one with any other dim is an error naming the variable and dim.
    """
    da = ds[var]
    extra = [d for d in da.dims if d not in sample_dims and d not in grid_dims]
    if extra:
        raise ValueError(f"variable {str(var)!r} has dimension(s) {extra} that are neither sample "
                         f"dims {list(sample_dims)} nor grid dims {list(grid_dims)}; select "
                         f"(ds.sel/isel) or add them to sample_dims")
    want = [*sample_dims, *grid_dims]
    missing = {d: ds.sizes[d] for d in want if d not in da.dims}
    if missing:
        da = da.expand_dims(missing)
    return da.transpose(*want)


def dataset_to_tensor(ds: xr.Dataset, variables: Sequence[Hashable], *,
                      sample_dims: Sequence[Hashable] | None = None,
                      grid_dims: Sequence[Hashable], dtype: torch.dtype = torch.float32) -> Tensor:
    """Stack ``variables`` of ``ds`` as channels.

    Args:
        ds: dataset whose variables live on ``sample_dims + grid_dims`` (missing ones broadcast).
        variables: names, in channel order.
        sample_dims: dims flattened (C order) into the batch axis N; default: every other dim
            of the variables, in order of appearance. ``[]`` gives N = 1.
        grid_dims: the spatial dims, e.g. ``("lat", "lon")`` or ``("site",)``.
        dtype: tensor dtype.

    Returns:
        Tensor (N, C, *grid). Dask-backed variables are computed here.
    """
    variables = list(variables)
    check_variables(ds, variables)
    grid_dims = [grid_dims] if isinstance(grid_dims, str) else list(grid_dims)
    check_dims(ds, grid_dims, "grid dimension")
    if sample_dims is None:
        sample_dims = list(dict.fromkeys(d for v in variables for d in ds[v].dims
                                         if d not in grid_dims))
    sample_dims = [sample_dims] if isinstance(sample_dims, str) else list(sample_dims)
    check_dims(ds, sample_dims, "sample dimension")
    grid = tuple(ds.sizes[d] for d in grid_dims)
    arrays = [np.asarray(variable_array(ds, v, sample_dims, grid_dims).values).reshape(-1, *grid)
              for v in variables]
    return torch.from_numpy(np.stack(arrays, axis=1)).to(dtype)


def _coord_size(coords: Mapping[Hashable, Any], dim: Hashable) -> int | None:
    if dim not in coords:
        return None
    c = coords[dim]
    return c.sizes[dim] if isinstance(c, xr.DataArray) and dim in c.dims else len(np.asarray(c))


def tensor_to_dataset(t: Tensor | np.ndarray, variables: Sequence[Hashable],
                      coords: Mapping[Hashable, Any] | xr.Coordinates | None,
                      dims: Sequence[Hashable], *, attrs: Mapping[str, Any] | None = None,
                      template: xr.Dataset | None = None) -> xr.Dataset:
    """Inverse of :func:`dataset_to_tensor`.

    Args:
        t: (N, C, *grid); N = product of the sizes of the leading (sample) dims.
        variables: C names, channel i -> ``variables[i]``.
        coords: coordinates, e.g. ``template.coords`` or ``{"member": np.arange(8)}``; those
            whose dims are not all in ``dims`` are dropped; a dimension coordinate whose
            length differs from its axis is an error.
        dims: names of the output dims, ``(*sample_dims, *grid_dims)``; ``len(grid_dims) =
            t.ndim - 2``. Each sample dim needs a coordinate giving its size, except that one
            sample dim may go without (its size is inferred from N).
        attrs: dataset attributes (e.g. provenance), applied over ``template.attrs``.
        template: dataset whose CF attributes (units, long_name, standard_name, ...) are copied
            to the same-named variables and coordinates, and whose attrs seed the output's.

    Returns:
        Dataset with one variable per channel on ``dims``.
    """
    arr = t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)
    variables, dims = list(variables), list(dims)
    if arr.ndim < 2 or arr.shape[1] != len(variables):
        raise ValueError(f"array of shape {arr.shape} has no channel axis 1 of size "
                         f"{len(variables)} for variables {variables}")
    coords = dict(coords.items()) if coords is not None else {}
    n_grid = arr.ndim - 2
    if len(dims) < n_grid:
        raise ValueError(f"dims {dims} name fewer axes than the {n_grid} grid axes of {arr.shape}")
    sample_dims, grid_dims = dims[:len(dims) - n_grid], dims[len(dims) - n_grid:]
    sizes = [_coord_size(coords, d) for d in sample_dims]
    unknown = [i for i, s in enumerate(sizes) if s is None]
    if len(unknown) > 1:
        raise ValueError(f"sample dims {[sample_dims[i] for i in unknown]} have no coordinates; "
                         f"at most one sample dim may be inferred from N = {arr.shape[0]}")
    known = int(np.prod([s for s in sizes if s is not None]))
    if unknown:
        sizes[unknown[0]] = arr.shape[0] // max(known, 1)
    if int(np.prod(sizes)) != arr.shape[0]:
        raise ValueError(f"N = {arr.shape[0]} does not equal the product of sample dim sizes "
                         f"{dict(zip(sample_dims, sizes))}")
    arr = arr.reshape(*sizes, arr.shape[1], *arr.shape[2:])
    shape = dict(zip(sample_dims, sizes)) | dict(zip(grid_dims, arr.shape[len(sizes) + 1:]))
    out_coords = {}
    for name, c in coords.items():
        if not isinstance(c, xr.DataArray):
            c = xr.DataArray(np.asarray(c), dims=(name,) if np.ndim(c) else ())
        if name in shape and c.dims == (name,) and c.sizes[name] != shape[name]:
            raise ValueError(f"coordinate {str(name)!r} has {c.sizes[name]} values but the "
                             f"tensor's {str(name)!r} axis has {shape[name]}")
        if all(d in shape and c.sizes[d] == shape[d] for d in c.dims):
            out_coords[name] = c
    data_vars = {v: (dims, np.take(arr, i, axis=len(sizes))) for i, v in enumerate(variables)}
    ds = xr.Dataset(data_vars, coords=out_coords)
    if template is not None:
        for name in list(ds.data_vars) + list(ds.coords):
            if name in template.variables:
                src = template.variables[name].attrs
                ds[name].attrs.update({k: src[k] for k in CF_ATTRS if k in src})
        ds.attrs.update(template.attrs)
    ds.attrs.update(attrs or {})
    return ds
