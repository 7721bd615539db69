"""Input/output plumbing shared by every metric.

Every metric is written once, against :class:`xarray.DataArray`. This module converts the other
accepted inputs to that form and back:

* ``xarray.DataArray`` / ``xarray.Dataset`` (eager or dask-backed): used as they are; a Dataset
  is scored variable by variable and gives a Dataset back.
* ``numpy.ndarray``, ``torch.Tensor`` and ``dask.array.Array`` (stays lazy): wrapped in a DataArray with dims ``dim_0, dim_1, ...``
  (the observation's axes) plus the member axis. For these inputs ``member_dim`` is an integer
  axis of the forecast; a string (the default ``"member"``) means axis 0, the member-first layout
  sciffusion writes ensembles in. ``reduce_dims`` are then integer axes of the observation (or
  ``"all"``). The result comes back as the same array type (a tensor on the same device); a
  dimension added by a metric (``rank``, ``bin``, ``wavenumber``) is the last axis.

The keyword shape shared by all metrics:

``member_dim``  name (or axis) of the ensemble dimension, default ``"member"``.
``reduce_dims`` dims averaged over after the pointwise score; ``None`` keeps every dimension,
                ``"all"`` reduces every dimension.
``weights``     weights for that average (e.g. :func:`latitude_weights`), broadcastable against
                the score; weights need ``reduce_dims``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np
import xarray as xr

MEMBER = "member"


def _is_torch(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "detach")


class Converted:
    """Remembers what kind of input came in, so the result can go back out as the same kind."""

    def __init__(self, kind: str, device: Any = None, ndim: int = 0):
        self.kind = kind  # "xarray", "numpy" or "torch"
        self.device = device
        self.ndim = ndim  # number of observation axes (numpy/torch only)

    def dims(self, reduce_dims: Any, every: list | None = None) -> Any:
        """Translate integer axes (numpy/torch inputs) into the dims of the wrapped DataArray; with
        ``every`` (the input's dims, not those a metric adds), ``"all"`` becomes those."""
        if every is not None and isinstance(reduce_dims, str) and reduce_dims == "all":
            return list(every)
        if self.kind == "xarray" or reduce_dims is None or isinstance(reduce_dims, str):
            return reduce_dims
        items = [reduce_dims] if isinstance(reduce_dims, (int, np.integer)) else list(reduce_dims)
        out = []
        for d in items:
            if isinstance(d, (int, np.integer)):
                if not -self.ndim <= d < self.ndim:
                    raise ValueError(f"reduce_dims axis {d} is out of range for {self.ndim}-d observation")
                out.append(f"dim_{int(d) % self.ndim}")
            else:
                out.append(d)
        return out

    def weights(self, weights: Any) -> Any:
        if weights is None or isinstance(weights, xr.DataArray):
            return weights
        w = _to_numpy(weights)
        return xr.DataArray(w, dims=[f"dim_{self.ndim - w.ndim + i}" for i in range(w.ndim)])

    def back(self, result: Any) -> Any:
        if self.kind == "xarray" or isinstance(result, (int, float)):
            return result
        if isinstance(result, xr.Dataset):  # several outputs (e.g. reliability): a dict of arrays
            return {k: self.back(v) for k, v in result.data_vars.items()}
        if isinstance(result, tuple):
            return tuple(self.back(r) for r in result)
        if self.kind == "dask":
            return result.data
        values = np.asarray(result.values)
        if self.kind == "torch":
            import torch

            return torch.from_numpy(np.ascontiguousarray(values)).to(self.device)
        return values


def _is_dask(x: Any) -> bool:
    return type(x).__module__.startswith("dask") and hasattr(x, "chunks")


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of a torch tensor or array-like; a dask array stays a (lazy) dask array."""
    if _is_torch(x):
        return x.detach().cpu().numpy()
    if _is_dask(x):
        return x
    return np.asarray(x)


def as_dataarray(x: Any, name: str, member_dim: Any = None) -> tuple[xr.DataArray, Converted]:
    """Wrap ``x`` in a DataArray; ``member_dim`` (if not None) names/places the member axis."""
    if isinstance(x, (xr.DataArray, xr.Dataset)):
        return x, Converted("xarray")
    kind = "torch" if _is_torch(x) else "dask" if _is_dask(x) else "numpy"
    device = x.device if kind == "torch" else None
    arr = _to_numpy(x)
    if arr.ndim == 0 and member_dim is not None:
        raise ValueError(f"{name} is a scalar; it needs a member axis")
    if member_dim is None:
        dims = [f"dim_{i}" for i in range(arr.ndim)]
        return xr.DataArray(arr, dims=dims), Converted(kind, device, arr.ndim)
    axis = member_dim if isinstance(member_dim, (int, np.integer)) else 0
    if not -arr.ndim <= axis < arr.ndim:
        raise ValueError(f"member axis {axis} is out of range for {arr.ndim}-d {name}")
    axis = int(axis) % arr.ndim
    dims = [f"dim_{i}" for i in range(arr.ndim - 1)]
    dims.insert(axis, MEMBER)
    return xr.DataArray(arr, dims=dims), Converted(kind, device, arr.ndim - 1)


def check_member(fc: xr.DataArray, member_dim: Hashable, name: str = "forecast") -> xr.DataArray:
    """Raise if ``member_dim`` is missing; rechunk (with a warning) a member dim split by dask."""
    if member_dim not in fc.dims:
        var = f" (variable {fc.name!r})" if fc.name is not None else ""
        raise ValueError(
            f"{name}{var} has no member dimension {member_dim!r}; its dims are {tuple(fc.dims)}. "
            "Pass member_dim=... to name the ensemble dimension."
        )
    if fc.chunks is not None:
        chunks = fc.chunks[fc.get_axis_num(member_dim)]
        if len(chunks) > 1:
            warnings.warn(
                f"{name}: member dimension {member_dim!r} is split across {len(chunks)} dask chunks; "
                "rechunking it into one chunk (chunk over time or space instead).",
                UserWarning,
                stacklevel=4,
            )
            fc = fc.chunk({member_dim: -1})
    return fc


def check_aligned(a: xr.DataArray, b: xr.DataArray, names: tuple[str, str] = ("forecast", "observation")):
    """Raise a clear error when two arrays share a dim whose size or coordinate differ."""
    for d in set(a.dims) & set(b.dims):
        if a.sizes[d] != b.sizes[d]:
            raise ValueError(
                f"{names[0]} and {names[1]} are not on the same grid: dimension {d!r} has size "
                f"{a.sizes[d]} vs {b.sizes[d]}"
            )
        if d in a.indexes and d in b.indexes and not a.indexes[d].equals(b.indexes[d]):
            raise ValueError(
                f"{names[0]} and {names[1]} are not on the same grid: coordinate {d!r} differs "
                f"({_summary(a.indexes[d])} vs {_summary(b.indexes[d])})"
            )


def _summary(index) -> str:
    v = np.asarray(index)
    return f"{v[0]}..{v[-1]}, n={len(v)}" if len(v) else "empty"


def resolve_dims(reduce_dims: Any, da: xr.DataArray) -> list[Hashable]:
    if reduce_dims is None:
        return []
    if isinstance(reduce_dims, str) and reduce_dims == "all":
        return list(da.dims)
    dims = [reduce_dims] if isinstance(reduce_dims, (str, Hashable)) and not isinstance(
        reduce_dims, (list, tuple, set)) else list(reduce_dims)
    missing = [d for d in dims if d not in da.dims]
    if missing:
        raise ValueError(f"reduce_dims {missing} not found; the score has dims {tuple(da.dims)}")
    return dims


def reduce(score: xr.DataArray, reduce_dims: Any, weights: Any, how: str = "mean") -> xr.DataArray:
    """Average (or sum, ``how="sum"``) ``score`` over ``reduce_dims`` with optional ``weights``.

    NaN points are skipped; with weights, the weights of NaN points are left out of the
    normalisation (xarray's ``weighted`` semantics). A Dataset is reduced variable by variable.
    """
    if isinstance(score, xr.Dataset):
        return score.map(lambda v: reduce(v, reduce_dims, weights, how))
    dims = resolve_dims(reduce_dims, score)
    if weights is not None:
        if not dims:
            raise ValueError("weights were given but reduce_dims is None; weights apply to the "
                             "average over reduce_dims (e.g. reduce_dims=['lat', 'lon'])")
        if not isinstance(weights, xr.DataArray):
            raise TypeError("weights must be an xarray.DataArray for xarray inputs")
        extra = [d for d in weights.dims if d not in score.dims]
        if extra:
            raise ValueError(f"weights have dims {extra} that the score lacks (score dims {tuple(score.dims)})")
        check_aligned(score, weights, ("score", "weights"))
        if weights.chunks is None and bool(np.any(np.isnan(weights.values))):
            raise ValueError("weights contain NaN")
        if score.dtype.kind == "f" and weights.dtype != score.dtype:
            weights = weights.astype(score.dtype)  # float32 scores stay float32
        w = score.weighted(weights)
        return w.sum(dims) if how == "sum" else w.mean(dims)
    if not dims:
        return score
    return score.sum(dims) if how == "sum" else score.mean(dims)


def float_dtype(*arrays: Any, dtype: Any = None) -> np.dtype:
    """Floating dtype of the result: ``dtype`` if given, else the forecast's (first array's) float
    dtype, else float64. float32 forecasts stay float32 whatever the observation's dtype."""
    if dtype is not None:
        return np.dtype(dtype)
    dt = np.dtype(arrays[0].dtype)
    return dt if dt.kind == "f" else np.dtype("float64")


def metric(func):
    """Decorate a metric written for DataArrays so it accepts every supported input type.

    ``func(forecast, observation, *, member_dim, reduce_dims, weights, **kw)`` receives
    DataArrays (forecast with the member dim checked) and returns a DataArray/Dataset.
    """

    @functools.wraps(func)
    def wrapper(forecast, observation, *args, member_dim="member", reduce_dims=None,
                weights=None, **kwargs):
        if isinstance(forecast, xr.Dataset) or isinstance(observation, xr.Dataset):
            return _per_variable(wrapper, forecast, observation, *args, member_dim=member_dim,
                                 reduce_dims=reduce_dims, weights=weights, **kwargs)
        fc, conv = as_dataarray(forecast, "forecast", member_dim)
        if conv.kind == "xarray":
            obs = observation if isinstance(observation, xr.DataArray) else xr.DataArray(observation)
        else:
            obs = _to_numpy(observation)
            if obs.shape != tuple(s for d, s in fc.sizes.items() if d != MEMBER):
                raise ValueError(
                    f"observation shape {obs.shape} does not match forecast shape {tuple(fc.shape)} "
                    f"without the member axis"
                )
            obs = xr.DataArray(obs, dims=[d for d in fc.dims if d != MEMBER])
        mdim = MEMBER if conv.kind != "xarray" else member_dim
        fc = check_member(fc, mdim)
        if mdim in obs.dims:
            raise ValueError(f"observation has the member dimension {mdim!r}; it should not")
        check_aligned(fc, obs)
        rdims = conv.dims(reduce_dims, [d for d in fc.dims if d != mdim] + [d for d in obs.dims if d not in fc.dims])
        out = func(fc, obs, *args, member_dim=mdim, reduce_dims=rdims,
                   weights=conv.weights(weights), **kwargs)
        return conv.back(out)

    return wrapper


def _per_variable(fn, forecast, observation, *args, **kwargs):
    """Score a Dataset variable by variable; the observation may be a Dataset or a DataArray."""
    if not isinstance(forecast, xr.Dataset):
        raise TypeError("observation is a Dataset but forecast is not; pass both as Datasets")
    out = {}
    for name, fc in forecast.data_vars.items():
        if isinstance(observation, xr.Dataset):
            if name not in observation.data_vars:
                raise KeyError(f"variable {name!r} is in the forecast but missing from the observation "
                               f"(observation has {list(observation.data_vars)})")
            obs = observation[name]
        else:
            obs = observation
        try:
            res = fn(fc, obs, *args, **kwargs)
        except ValueError as exc:
            raise ValueError(f"variable {name!r}: {exc}") from exc
        if isinstance(res, xr.Dataset):  # multi-output metric: prefix the variable name
            for k, v in res.data_vars.items():
                out[f"{name}_{k}"] = v
        else:
            out[name] = res
    return xr.Dataset(out)


def apply_pointwise(kernel, fc: xr.DataArray, obs: xr.DataArray, member_dim: Hashable,
                    dtypes: Iterable, **kwargs):
    """Run ``kernel(fc_values[..., M], obs_values[...], **kwargs)`` over every point, lazily for
    dask inputs (one call per chunk). Returns one DataArray per output dtype."""
    dtypes = list(dtypes)
    res = xr.apply_ufunc(
        kernel, fc, obs,
        input_core_dims=[[member_dim], []],
        output_core_dims=[[] for _ in dtypes],
        dask="parallelized",
        output_dtypes=dtypes,
        kwargs=kwargs,
    )
    return res if len(dtypes) > 1 else (res,)


def drop_member_coords(da: xr.DataArray, member_dim: Hashable) -> xr.DataArray:
    """Drop non-index coordinates that depend on the member dim (they cannot survive a reduction)."""
    drop = [c for c in da.coords if member_dim in da[c].dims and c != member_dim]
    return da.drop_vars(drop) if drop else da
