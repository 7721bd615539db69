"""Per-variable normalisation statistics, fitted lazily with dask and stored as JSON.

``Normalizer.fit`` builds the mean and standard deviation of every variable as lazy dask
reductions and evaluates them all in one ``dask.compute`` call (one pass over a chunked
store). Missing values (NaN) are skipped. The statistics serialise with ``to_dict`` into the
checkpoint config, so sampling uses exactly the constants training used.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import dask
import numpy as np
import torch
import xarray as xr
from torch import Tensor


class Normalizer:
    """Affine per-variable normalisation ``z = (x - mean) / std``.

    Statistics are scalars per variable by default. If :meth:`fit` reduces over only some
    dimensions, each variable's statistics keep the others (``self.dims[v]``), which must be
    the trailing grid dimensions of the tensors it encodes (e.g. per-grid-point statistics
    on ``("lat", "lon")``).

    Args:
        mean, std: ``{variable: float or nested list}``.
        dims: ``{variable: [remaining dims]}``; omitted -> scalar statistics.
    """

    def __init__(self, mean: dict[str, Any], std: dict[str, Any],
                 dims: dict[str, Sequence[str]] | None = None):
        if set(mean) != set(std):
            raise ValueError(f"mean and std cover different variables: {sorted(mean)} vs {sorted(std)}")
        self.mean = {str(v): np.asarray(m, dtype=np.float64) for v, m in mean.items()}
        self.std = {str(v): np.asarray(s, dtype=np.float64) for v, s in std.items()}
        self.dims = {v: list((dims or {}).get(v, [])) for v in self.mean}
        for v in self.mean:
            if self.mean[v].ndim != len(self.dims[v]) or self.std[v].shape != self.mean[v].shape:
                raise ValueError(f"variable {v!r}: statistics of shape {self.mean[v].shape} / "
                                 f"{self.std[v].shape} do not match dims {self.dims[v]}")
            if not np.all(np.isfinite(self.mean[v])):
                raise ValueError(f"variable {v!r} has a non-finite mean (all values missing?)")
            if not np.all(self.std[v] > 0):
                raise ValueError(f"variable {v!r} has zero (or non-finite) standard deviation; "
                                 f"it is constant and cannot be normalised - drop it or pass it "
                                 f"as a static input with its own scaling")

    @property
    def variables(self) -> list[str]:
        return list(self.mean)

    @classmethod
    def fit(cls, ds: xr.Dataset, variables: Iterable[Hashable],
            dims: Sequence[str] | str | None = None) -> Normalizer:
        """Fit mean and std (ddof=0, NaN skipped) of ``variables`` of ``ds``.

        Args:
            ds: the dataset; dask-backed variables stay lazy until the single compute here.
            variables: names of the variables to fit.
            dims: dimensions to reduce over (default: all dimensions of each variable).
        """
        variables = [str(v) for v in variables]
        missing = [v for v in variables if v not in ds.data_vars]
        if missing:
            raise ValueError(f"variable(s) {missing} not found in dataset; available: "
                             f"{sorted(map(str, ds.data_vars))}")
        if isinstance(dims, str):
            dims = [dims]
        lazy_mean, lazy_std, kept = {}, {}, {}
        for v in variables:
            da = ds[v].astype(np.float64)
            red = list(da.dims) if dims is None else [d for d in dims if d in da.dims]
            lazy_mean[v] = da.mean(red, skipna=True)
            lazy_std[v] = da.std(red, skipna=True, ddof=0)
            kept[v] = [str(d) for d in da.dims if d not in red]
        means, stds = dask.compute(lazy_mean, lazy_std)
        return cls({v: means[v].values for v in variables}, {v: stds[v].values for v in variables},
                   kept)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: ``{"mean": {...}, "std": {...}, "dims": {...}}``."""
        return {"mean": {v: m.tolist() for v, m in self.mean.items()},
                "std": {v: s.tolist() for v, s in self.std.items()},
                "dims": {v: list(d) for v, d in self.dims.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        """Inverse of :meth:`to_dict`."""
        return cls(d["mean"], d["std"], d.get("dims"))

    def _stats(self, t: Tensor, variables: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Stack stats to broadcast against t (B, C, *grid): shapes (C, *grid-ish)."""
        variables = [str(v) for v in variables]
        if t.ndim < 2 or t.shape[1] != len(variables):
            raise ValueError(f"tensor of shape {tuple(t.shape)} has {t.shape[1] if t.ndim > 1 else '?'} "
                             f"channels (axis 1) for {len(variables)} variables {variables}")
        unknown = [v for v in variables if v not in self.mean]
        if unknown:
            raise ValueError(f"no normalisation statistics for variable(s) {unknown}; "
                             f"known: {self.variables}")
        grid = t.shape[2:]
        means, stds = [], []
        for v in variables:
            m, s = self.mean[v], self.std[v]
            if m.ndim > len(grid) or (m.ndim and tuple(grid[len(grid) - m.ndim:]) != m.shape):
                raise ValueError(f"statistics of {v!r} on dims {self.dims[v]} (shape {m.shape}) "
                                 f"do not match the trailing grid axes {tuple(grid)}")
            means.append(np.broadcast_to(m, grid))
            stds.append(np.broadcast_to(s, grid))
        kw = dict(dtype=t.dtype, device=t.device)
        return torch.as_tensor(np.stack(means), **kw), torch.as_tensor(np.stack(stds), **kw)

    def encode(self, t: Tensor, variables: Sequence[str]) -> Tensor:
        """Normalise a channel-stacked tensor. t: (B, C, *grid), channel i = variables[i]."""
        mean, std = self._stats(t, variables)
        return (t - mean) / std

    def decode(self, t: Tensor, variables: Sequence[str]) -> Tensor:
        """Undo :meth:`encode`. t: (B, C, *grid) -> (B, C, *grid) in physical units."""
        mean, std = self._stats(t, variables)
        return t * std + mean

    def __repr__(self) -> str:
        items = ", ".join(f"{v}: mean={self.mean[v].mean():.4g} std={self.std[v].mean():.4g}"
                          for v in self.mean)
        return f"Normalizer({items})"
