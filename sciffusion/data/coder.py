"""The field coder every emulator shares: variables -> channels, grid, normalisation, input checks.

A coder holds what a model learnt about its data besides weights: the variables (channel order),
the grid (dims, sizes, coordinates), per-variable CF attributes and normalisation constants. It
round-trips through JSON (stored in the checkpoint) and :meth:`FieldCoder.check` refuses new input
with an error naming the difference (``the seeds lack variable(s) ['x'] ...``). Task coders
(``SeedsCoder``, ``RolloutCoder``, ``DownscaleCoder`` in :mod:`sciffusion.emulators`) add their own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import xarray as xr


def names(x) -> list[str]:
    """None -> [], a single name -> [name], a sequence -> list of str."""
    return [] if x is None else [str(x)] if isinstance(x, str) else [str(v) for v in x]


def check_spread(std: dict[str, float], task: str) -> None:
    """Raise ValueError naming the first variable whose training std is not positive."""
    for name, s in std.items():
        if not s > 0:
            raise ValueError(f"variable {name!r} is constant (zero standard deviation) in the training data; "
                             f"it cannot be {task}")


def numeric_coords(ds: xr.Dataset, dims) -> dict[str, list | None]:
    """Per dim, its coordinate values as floats, or None (no coordinate, or not numeric)."""
    return {d: np.asarray(ds[d].values, dtype=float).tolist() if d in ds.coords and ds[d].dtype.kind in "fiu"
            else None for d in dims}


class FieldCoder:
    """Base of the task coders. Subclasses list their constructor keywords in ``KEYS`` (what
    :meth:`to_dict` writes) and set ``variables``, ``grid_dims``, ``grid_sizes`` ``{dim: size}``,
    ``grid_coords`` ``{dim: values or None}`` and ``attrs`` ``{variable: CF attributes}`` (units are checked)."""

    KEYS: tuple[str, ...] = ()
    role = "input"  # what :meth:`check`'s messages call the data checked
    attrs: dict[str, dict] = {}

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(self, k)) for k in self.KEYS)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return cls(**d)

    @property
    def channels(self) -> int:
        return len(self.variables)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(self.grid_sizes[d] for d in self.grid_dims)

    # ------------------------------------------------------------------ normalisation
    def _vec(self, d: dict, names, x: torch.Tensor) -> torch.Tensor:
        """``[d[k] for k in names]`` shaped ``(C, 1, ..)`` to broadcast against ``(..., C, *grid)``."""
        v = torch.tensor([d[k] for k in names], dtype=x.dtype, device=x.device)
        return v.reshape(-1, *([1] * len(self.grid_dims)))

    def _affine(self, x: torch.Tensor, mean: dict, std: dict, names=None) -> torch.Tensor:
        """``(x - mean) / std`` per channel of ``x (..., C, *grid)`` (channels ``names``, default the variables)."""
        names = self.variables if names is None else names
        return (x - self._vec(mean, names, x)) / self._vec(std, names, x)

    def _unaffine(self, z: torch.Tensor, mean: dict, std: dict, names=None) -> torch.Tensor:
        """Inverse of :meth:`_affine`: ``z * std + mean``."""
        names = self.variables if names is None else names
        return z * self._vec(std, names, z) + self._vec(mean, names, z)

    # ------------------------------------------------------------------ checks
    def dataset(self, obj: xr.Dataset | xr.DataArray, role: str | None = None) -> xr.Dataset:
        """``obj`` as a Dataset (a DataArray is its one variable, named after it or else after the first trained
        variable); with ``role``, a ValueError names the trained variables it lacks (``the {role} lacks ...``)."""
        if isinstance(obj, xr.DataArray):
            obj = obj.to_dataset(name=obj.name if obj.name is not None else self.variables[0])
        missing = [v for v in self.variables if v not in obj.data_vars]
        if role is not None and missing:
            raise ValueError(f"the {role} lacks variable(s) {missing}")
        return obj

    def input_grid(self) -> tuple[dict[str, int], dict[str, Any]]:
        """The sizes and coordinates an input must have (default: the training grid)."""
        return self.grid_sizes, self.grid_coords

    def _size_hint(self, ds: xr.Dataset) -> str:
        """More to say when a grid size differs (appended to the message)."""
        return ""

    def check(self, ds: xr.Dataset, role: str | None = None) -> None:
        """Raise ValueError naming what differs between ``ds`` (called ``role`` in the message,
        default ``self.role``) and the training data: a missing variable, a missing grid dim, a
        grid size, a grid coordinate, units."""
        role = role or self.role
        missing = [v for v in self.variables if v not in ds.data_vars]
        if missing:
            raise ValueError(f"the {role} {'lack' if role.endswith('s') else 'lacks'} variable(s) {missing} the model "
                             f"was trained on (trained: {self.variables}; given: {sorted(map(str, ds.data_vars))})")
        sizes, coords = self.input_grid()
        for v in self.variables:
            absent = [d for d in self.grid_dims if d not in ds[v].dims]
            if absent:
                raise ValueError(f"{role} variable {v!r} has no grid dimension(s) {absent} (its dims: {ds[v].dims}); "
                                 f"the model was trained on grid {sizes}")
        for d in self.grid_dims:
            if ds.sizes[d] != sizes[d]:
                raise ValueError(f"{role} grid dimension {d!r} has size {ds.sizes[d]}, the model was trained on "
                                 f"{sizes[d]}{self._size_hint(ds)}")
            ref = np.asarray(coords.get(d) if coords.get(d) is not None else [])
            if ref.size and ref.dtype.kind in "fiu" and d in ds.coords and ds[d].dtype.kind in "fiu" \
                    and not np.allclose(np.asarray(ds[d].values, dtype=float), ref.astype(float)):
                raise ValueError(f"{role} coordinate {d!r} differs from the training grid "
                                 f"({np.asarray(ds[d].values)[:4]}... vs {ref[:4]}...)")
        for v in self.variables:
            want, have = (self.attrs.get(v) or {}).get("units"), ds[v].attrs.get("units")
            if want is not None and have is None:
                raise ValueError(f"variable {v!r} has no 'units' attribute, but the model was trained on {v!r} "
                                 f"in units {want!r}; set ds[{v!r}].attrs['units']")
            if want is not None and str(have) != str(want):
                raise ValueError(f"variable {v!r} is in units {have!r} but the model was trained on {want!r}")
