"""Tensors for the rollout emulators: states, increments and forcings <-> normalised channels."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from sciffusion.data.coder import FieldCoder, check_spread, names as _names
from sciffusion.data.tensors import check_variables, dataset_to_tensor


class RolloutCoder(FieldCoder):
    """How states on ``(*grid)`` become normalised tensors ``(C, *grid)`` and back.

    Per variable scalar ``mean``/``std`` of the state and ``inc_mean``/``inc_std`` of its one-step
    increment ``x(t+dt) - x(t)`` (the autoregressive model's target), and per forcing variable its
    ``mean``/``std``. ``dt`` is the training data's time step (a number, or nanoseconds for datetime
    coordinates), ``grid`` the grid coordinates (checked at rollout, written on the output).
    """

    role = "initial state"
    KEYS = ("variables", "grid_dims", "grid_shape", "mean", "std", "inc_mean", "inc_std", "history", "forcings",
            "forcing_mean", "forcing_std", "dt", "time_kind", "time_dim", "grid", "attrs", "time_attrs")

    def __init__(self, variables, grid_dims, grid_shape, *, mean, std, inc_mean=None, inc_std=None, history=1,
                 forcings=(), forcing_mean=None, forcing_std=None, dt=1.0, time_kind="numeric", time_dim="time",
                 grid=None, attrs=None, time_attrs=None):
        self.variables, self.grid_dims = _names(variables), _names(grid_dims)
        self.grid_sizes = dict(zip(self.grid_dims, (int(s) for s in grid_shape)))
        self.mean, self.std = {k: float(mean[k]) for k in self.variables}, {k: float(std[k]) for k in self.variables}
        self.inc_mean = {k: float((inc_mean or {}).get(k, 0.0)) for k in self.variables}
        self.inc_std = {k: float((inc_std or {}).get(k, 1.0)) for k in self.variables}
        self.history, self.forcings = int(history), _names(forcings)
        self.forcing_mean = {k: float((forcing_mean or {})[k]) for k in self.forcings}
        self.forcing_std = {k: float((forcing_std or {})[k]) for k in self.forcings}
        self.dt, self.time_kind, self.time_dim = dt, time_kind, str(time_dim)
        self.grid = {k: list(v) for k, v in (grid or {}).items()}
        self.attrs, self.time_attrs = dict(attrs or {}), dict(time_attrs or {})
        if self.history < 1:
            raise ValueError(f"history must be >= 1, got {history}")

    @property
    def grid_coords(self) -> dict[str, list]:
        return self.grid

    @property
    def cond_channels(self) -> int:
        return self.history * self.channels + len(self.forcings)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, ds: xr.Dataset, variables, grid_dims, time_dim: str, sample_dims, history: int, forcings) -> tuple:
        """Statistics from ``ds``; returns ``(coder, states (S, T, C, *grid), forcing (S, T, F, *grid) | None)``."""
        check_variables(ds, [*variables, *forcings], "training variable")
        if time_dim not in ds[variables[0]].dims:
            raise ValueError(f"variable {variables[0]!r} has no {time_dim!r} dimension: dims {ds[variables[0]].dims}")
        lead = [*sample_dims, time_dim]
        x = dataset_to_tensor(ds, variables, sample_dims=lead, grid_dims=grid_dims, dtype=torch.float64)
        x = x.reshape(-1, ds.sizes[time_dim], *x.shape[1:]).numpy()  # (S, T, C, *grid)
        if x.shape[1] < history + 1:
            raise ValueError(f"need at least history + 1 = {history + 1} times along {time_dim!r}, got {x.shape[1]}")
        f = None
        if forcings:
            f = dataset_to_tensor(ds, forcings, sample_dims=lead, grid_dims=grid_dims, dtype=torch.float64)
            f = f.reshape(*x.shape[:2], *f.shape[1:]).numpy()
        red = (0, 1, *range(3, x.ndim))
        inc = x[:, 1:] - x[:, :-1]
        dt, kind = 1.0, "numeric"
        if time_dim in ds.coords:
            tv = ds[time_dim].values
            steps = np.diff(tv)
            if len(steps) and not np.all(steps == steps[0]) and not np.allclose(steps.astype(float), float(steps[0])):
                raise ValueError(f"the {time_dim!r} coordinate is not evenly spaced; resample it first")
            if np.issubdtype(tv.dtype, np.datetime64):
                dt, kind = int(steps[0].astype("timedelta64[ns]").astype(np.int64)), "datetime"
            elif len(steps):
                dt = float(steps[0])
        coder = cls(variables, grid_dims, x.shape[3:], history=history, forcings=forcings,
                    mean=dict(zip(variables, x.mean(red))), std=dict(zip(variables, x.std(red))),
                    inc_mean=dict(zip(variables, inc.mean(red))), inc_std=dict(zip(variables, inc.std(red))),
                    forcing_mean=dict(zip(forcings, f.mean(red))) if f is not None else None,
                    forcing_std=dict(zip(forcings, f.std(red))) if f is not None else None,
                    dt=dt, time_kind=kind, time_dim=time_dim,
                    grid={d: np.asarray(ds[d].values).tolist() for d in grid_dims if d in ds.coords},
                    attrs={v: dict(ds[v].attrs) for v in variables},
                    time_attrs=dict(ds[time_dim].attrs) if time_dim in ds.coords else {})
        check_spread({**coder.std, **coder.inc_std, **coder.forcing_std}, "emulated")
        return coder, x, f

    # ------------------------------------------------------------------ tensors
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Physical states ``(..., C, *grid)`` -> normalised."""
        return self._affine(x, self.mean, self.std)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return self._unaffine(z, self.mean, self.std)

    def encode_increment(self, dx: torch.Tensor) -> torch.Tensor:
        return self._affine(dx, self.inc_mean, self.inc_std)

    def decode_increment(self, z: torch.Tensor) -> torch.Tensor:
        return self._unaffine(z, self.inc_mean, self.inc_std)

    def normalize_forcing(self, f: torch.Tensor) -> torch.Tensor:
        return self._affine(f, self.forcing_mean, self.forcing_std, self.forcings)

    def condition(self, hist: torch.Tensor, forcing: torch.Tensor | None) -> torch.Tensor:
        """``hist (B, history, C, *grid)`` physical, ``forcing (B, F, *grid)`` -> cond ``(B, Cc, *grid)``."""
        z = self.normalize(hist).flatten(1, 2)
        if self.forcings:
            z = torch.cat([z, self.normalize_forcing(forcing.to(z.dtype))], dim=1)
        return z

    # ------------------------------------------------------------------ xarray
    def times(self, t0, n: int) -> np.ndarray:
        """``t0 + k dt`` for ``k = 0..n-1``."""
        k = np.arange(n)
        if self.time_kind == "datetime":
            return np.datetime64(t0, "ns") + k * np.timedelta64(int(self.dt), "ns")
        return float(t0) + k * float(self.dt)

    def forcing_at(self, forcings: xr.Dataset | None, times: np.ndarray) -> np.ndarray | None:
        """Forcing fields ``(len(times), F, *grid)`` at ``times`` (a field without a time dim is static);
        ValueError naming the variable and the missing range."""
        if not self.forcings:
            return None
        if forcings is None:
            raise ValueError(f"this model is driven by forcing(s) {self.forcings}; pass forcings= covering "
                             f"{self.time_dim} {times[0]}..{times[-1]}")
        out = []
        for v in self.forcings:
            if v not in forcings.data_vars:
                raise ValueError(f"forcings lack variable {v!r}; the model was trained with {self.forcings}")
            fv = forcings[v]
            if self.time_dim not in fv.dims:  # a static field (orography, a forcing pattern): the same at every time
                fv = fv.expand_dims({self.time_dim: len(times)}).assign_coords({self.time_dim: times})
            elif self.time_dim not in fv.coords:
                raise ValueError(f"forcing {v!r} has no {self.time_dim!r} coordinate")
            tv = fv[self.time_dim].values
            if self.time_kind == "datetime":
                idx = np.searchsorted(tv, times)
                ok = (idx < len(tv)) & (tv[np.minimum(idx, len(tv) - 1)] == times)
            else:
                tol = 1e-6 * abs(float(self.dt))
                idx = np.clip(np.searchsorted(tv, times - tol), 0, len(tv) - 1)
                ok = np.abs(tv[idx] - times) <= tol
            if not ok.all():
                miss = times[~ok]
                raise ValueError(f"forcing {v!r} does not cover the rollout: it has {self.time_dim} {tv[0]}..{tv[-1]} "
                                 f"but the rollout needs {times[0]}..{times[-1]}; missing {miss[0]}..{miss[-1]} "
                                 f"({len(miss)} time(s))")
            sel = fv.isel({self.time_dim: idx})
            grid = [d for d in self.grid_dims if d in sel.dims]
            arr = sel.transpose(self.time_dim, *grid).values.astype(np.float64)
            out.append(np.broadcast_to(arr.reshape(len(times), *[sel.sizes[d] if d in grid else 1 for d in self.grid_dims]),
                                       (len(times), *self.grid_shape)))
        return np.stack(out, axis=1)
