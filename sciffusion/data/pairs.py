"""Condition/target training pairs from an xarray Dataset.

Two pairings, chosen by ``n_seeds``:

* **Offset pairs** along an ordered dim (``along="time"``, ``"lead_time"``, ...): the
  condition is the state at index t (and ``history`` earlier states t-h..t-1, oldest first),
  the target is the state at t + ``offset``. Item ``i = s * n_pairs + (t - history)`` for
  sample s (flattened other dims, C order) and t in ``[history, L - offset)``.
* **Member pairs** (``along="member", n_seeds=K``): the condition is K seed members, the
  target another member of the same ensemble; every other non-grid dim (init_time,
  lead_time, ...) is a sample dim. Seeds are ``seed_members`` (default the first K) and the
  targets run over the remaining members: item ``i = s * (M - K) + j`` pairs sample s with
  the j-th non-seed member.

Items are dicts ``{"x": (C, *grid), "cond": (Cc, *grid)}`` of float32 (plus ``"mask"``, shaped
like ``x`` with 1 = observed, when ``allow_missing=True`` and the targets contain NaN; NaN
are then replaced by 0, the normalised mean). Cond channels are ordered state-major
(``[v1@t-h, v2@t-h, ..., v1@t, v2@t]`` or ``[v1@seed0, v2@seed0, ...]``), then ``static``.

The needed variables are computed into memory once in the constructor (the rest of a
lazily opened store is never read): this suits data sets that fit in RAM; for larger ones,
subset the Dataset first (``ds.isel(time=slice(...))``) or build several PairDatasets.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor
from torch.utils.data import Dataset

from .coder import names as _names
from .normalize import Normalizer
from .tensors import check_dims, check_variables, dataset_to_tensor


def check_monotonic(ds: xr.Dataset, dim: Hashable) -> None:
    """Raise ValueError naming ``dim`` if its coordinate is not strictly increasing."""
    if dim not in ds.coords:
        return
    values = np.asarray(ds[dim].values)
    bad = np.flatnonzero(~(values[1:] > values[:-1]))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"coordinate {str(dim)!r} is not strictly increasing: element {i + 1} "
                         f"({values[i + 1]}) follows {values[i]}; sort with "
                         f"ds.sortby({str(dim)!r}) and drop duplicates")


def seed_positions(seed_members, n_seeds: int, size: int, dim: Hashable = "member") -> list[int]:
    """The K seed positions along ``dim`` (default ``range(K)``); ValueError unless K distinct positions
    in ``[0, size)``."""
    seeds = list(range(n_seeds)) if seed_members is None else [int(m) for m in seed_members]
    if len(seeds) != n_seeds or len(set(seeds)) != n_seeds or not all(0 <= m < size for m in seeds):
        raise ValueError(f"seed_members {seeds} must be n_seeds={n_seeds} distinct positions in [0, {size}) along "
                         f"{str(dim)!r}")
    return seeds


class PairDataset(Dataset):
    """Torch Dataset of (condition, target) pairs along a dim of an xarray Dataset.

    Args:
        ds: the data; variables on (sample dims..., along, *grid_dims).
        variables: target variables (channels of x, in order).
        grid_dims: spatial dims, e.g. ``("lat", "lon")`` or ``("site",)``.
        along: the pairing dimension (``"time"``, ``"lead_time"``, ``"member"``, ...).
        offset: target index minus condition index (offset pairs), >= 1.
        history: extra earlier states in the condition (offset pairs).
        n_seeds: K seed members -> member pairs along ``along``.
        seed_members: positions of the K seeds (default ``range(K)``).
        cond_variables: variables of the conditioning states (default ``variables``).
        static: variables without sample/pair dims (orography, masks) appended to cond.
        cond_grid_dims: grid dims of the cond/static variables (default ``grid_dims``); their
            sizes must equal the target grid's.
        normalizer: a :class:`Normalizer` with statistics for every variable used; None
            leaves values unscaled.
        allow_missing: accept NaN (masked in targets, zero-filled everywhere).
    """

    def __init__(self, ds: xr.Dataset, variables: Sequence[Hashable], *,
                 grid_dims: Sequence[Hashable], along: Hashable = "time", offset: int = 1,
                 history: int = 0, n_seeds: int | None = None,
                 seed_members: Sequence[int] | None = None,
                 cond_variables: Sequence[Hashable] | None = None,
                 static: Sequence[Hashable] | None = None,
                 cond_grid_dims: Sequence[Hashable] | None = None,
                 normalizer: Normalizer | None = None, allow_missing: bool = False):
        self.variables = _names(variables)
        self.cond_variables = _names(cond_variables) or list(self.variables)
        self.static = _names(static)
        self.grid_dims = _names(grid_dims)
        self.cond_grid_dims = _names(cond_grid_dims) or list(self.grid_dims)
        self.along, self.allow_missing = along, allow_missing
        check_variables(ds, self.variables, "target variable")
        check_variables(ds, self.cond_variables, "condition variable")
        check_variables(ds, self.static, "static variable")
        check_dims(ds, [along], "pair dimension (along)")
        check_dims(ds, self.grid_dims, "grid dimension")
        check_dims(ds, self.cond_grid_dims, "condition grid dimension")
        if along in self.grid_dims:
            raise ValueError(f"pair dimension {str(along)!r} is also a grid dimension")
        self._check_grids(ds)
        for v in self.variables:
            if along not in ds[v].dims:
                raise ValueError(f"target variable {v!r} has no dimension {str(along)!r} to pair "
                                 f"along; its dims are {ds[v].dims}")
        size = ds.sizes[along]
        self.member_mode = n_seeds is not None
        if self.member_mode:
            self._setup_members(size, n_seeds, seed_members)
        else:
            if str(along) == "member":
                raise ValueError("along='member' pairs members: pass n_seeds=K")
            check_monotonic(ds, along)
            if int(offset) < 1 or int(history) < 0:
                raise ValueError(f"need offset >= 1 and history >= 0; got {offset}, {history}")
            self.offset, self.history = int(offset), int(history)
            self.n_pairs = size - self.offset - self.history
            if self.n_pairs < 1:
                raise ValueError(f"dimension {str(along)!r} has {size} steps: too few for "
                                 f"offset={offset} and history={history}")
        self.sample_dims = list(dict.fromkeys(
            d for v in self.variables for d in ds[v].dims
            if d != along and d not in self.grid_dims))
        self.sample_shape = tuple(ds.sizes[d] for d in self.sample_dims)
        self.grid_shape = tuple(ds.sizes[d] for d in self.grid_dims)
        needed = list(dict.fromkeys(self.variables + self.cond_variables + self.static))
        sub = ds[needed].compute()  # one read of exactly the needed variables; ds is untouched
        lead = [*self.sample_dims, along]
        x = dataset_to_tensor(sub, self.variables, sample_dims=lead, grid_dims=self.grid_dims)
        c = dataset_to_tensor(sub, self.cond_variables, sample_dims=lead,
                              grid_dims=self.cond_grid_dims)
        st = (dataset_to_tensor(sub, self.static, sample_dims=[], grid_dims=self.cond_grid_dims)[0]
              if self.static else torch.zeros(0, *self.grid_shape))
        for t, names in ((x, self.variables), (c, self.cond_variables), (st[None], self.static)):
            self._check_nan(t, names)
        if normalizer is not None:
            x = normalizer.encode(x, self.variables)
            c = normalizer.encode(c, self.cond_variables)
            st = normalizer.encode(st[None], self.static)[0] if self.static else st
        self.mask = (~torch.isnan(x)).float() if allow_missing and torch.isnan(x).any() else None
        lead_shape = (int(np.prod(self.sample_shape)), size)
        self.x = torch.nan_to_num(x, nan=0.0).reshape(*lead_shape, *x.shape[1:])
        self.c = torch.nan_to_num(c, nan=0.0).reshape(*lead_shape, *c.shape[1:])
        self.st = torch.nan_to_num(st, nan=0.0)
        if self.mask is not None:
            self.mask = self.mask.reshape(self.x.shape)
        self.channels = len(self.variables)
        n_states = self.n_seeds if self.member_mode else self.history + 1
        self.cond_channels = n_states * len(self.cond_variables) + len(self.static)

    def _check_grids(self, ds: xr.Dataset) -> None:
        if len(self.cond_grid_dims) != len(self.grid_dims):
            raise ValueError(f"condition grid dims {self.cond_grid_dims} and target grid dims "
                             f"{self.grid_dims} have different ranks")
        for dc, dt in zip(self.cond_grid_dims, self.grid_dims):
            if ds.sizes[dc] != ds.sizes[dt]:
                raise ValueError(f"condition and target grids differ: condition dim {str(dc)!r} "
                                 f"has size {ds.sizes[dc]} but target dim {str(dt)!r} has size "
                                 f"{ds.sizes[dt]}; regrid the condition first")

    def _setup_members(self, size: int, n_seeds: int, seed_members) -> None:
        seeds = seed_positions(seed_members, n_seeds, size, self.along)
        self.n_seeds, self.seeds = n_seeds, seeds
        self.targets = [m for m in range(size) if m not in seeds]
        if not self.targets:
            raise ValueError(f"{str(self.along)!r} has {size} members: none left as targets "
                             f"after {n_seeds} seeds")
        self.n_pairs = len(self.targets)

    def _check_nan(self, t: Tensor, names: Sequence[str]) -> None:
        if self.allow_missing:
            return
        for i, name in enumerate(names):
            count = int(torch.isnan(t[:, i]).sum())
            if count:
                raise ValueError(f"variable {name!r} has {count} NaN value(s) of "
                                 f"{t[:, i].numel()} in the training data; pass "
                                 f"allow_missing=True to train with a mask, or fill them")

    def __len__(self) -> int:
        return self.x.shape[0] * self.n_pairs

    def index(self, i: int) -> dict[str, Any]:
        """Positions behind item i: ``{"sample": {dim: pos}, "cond": [pos along], "target": pos}``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} pairs")
        s, j = divmod(i % len(self), self.n_pairs)
        sample = dict(zip(self.sample_dims, map(int, np.unravel_index(s, self.sample_shape))))
        if self.member_mode:
            return {"sample": sample, "cond": list(self.seeds), "target": self.targets[j]}
        t = j + self.history
        return {"sample": sample, "cond": list(range(t - self.history, t + 1)),
                "target": t + self.offset}

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        where = self.index(i)
        s, _ = divmod(i % len(self), self.n_pairs)
        cond = self.c[s, where["cond"]].reshape(-1, *self.c.shape[3:])
        item = {"x": self.x[s, where["target"]],
                "cond": torch.cat([cond, self.st], dim=0) if self.static else cond}
        if self.mask is not None:
            item["mask"] = self.mask[s, where["target"]]
        return item
