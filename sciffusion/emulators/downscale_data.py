"""Tensors for downscaling: input checks, the residual target and the condition (CorrDiff recipe).

The model learns the residual of the fine field from the interpolated coarse field::

    u = upsample(coarse)                      (bicubic, mask-aware, periodic where the grid is)
    z = (fine - u) / r_v                      r_v = std of the training residual of variable v

conditioned, on the fine grid, on ``(u - mu_v) / sd_v`` for every variable, one validity-mask
channel per variable that has missing points (1 valid, 0 missing), and the static fields
(normalised to zero mean and unit std, NaN set to 0). Missing points (land) are 0 in every
tensor and left out of the loss; generation writes NaN there.

:class:`DownscaleCoder` holds these constants, the grids and the masks (JSON-serialisable,
stored in the checkpoint) and checks that a coarse input matches what the model was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

from sciffusion.data.coder import FieldCoder, check_spread, names as _names, numeric_coords
from sciffusion.data.tensors import CF_ATTRS, dataset_to_tensor
from sciffusion.emulators.coarsen import upsample_tensor


def stack(ds: xr.Dataset, variables: Sequence[str], sample_dim: str, grid_dims: Sequence[str]) -> np.ndarray:
    """``variables`` of ``ds`` as a float64 array ``(N, C, *grid)`` (N along ``sample_dim``, 1 without it)."""
    lead = [sample_dim] if sample_dim in ds.dims else []
    return dataset_to_tensor(ds, variables, sample_dims=lead, grid_dims=grid_dims, dtype=torch.float64).numpy()


def _shape(sizes) -> str:
    return "x".join(str(s) for s in sizes)


class DownscaleCoder(FieldCoder):
    """Grids, masks and normalisation constants of a :class:`~sciffusion.emulators.Downscaler`."""

    role = "coarse input"
    KEYS = ("variables", "factor", "grid_dims", "sample_dim", "fine_sizes", "fine_coords", "coarse_coords",
            "coord_attrs", "periodic", "method", "center", "scale", "res_scale", "attrs", "fine_valid",
            "coarse_valid", "static")

    def __init__(self, **kw):
        missing = [k for k in self.KEYS if k not in kw]
        if missing:
            raise ValueError(f"downscaler config lacks {missing}")
        for k in self.KEYS:
            setattr(self, k, kw[k])
        self.factor = int(self.factor)
        self._fine_valid = {v: None if m is None else np.asarray(m, dtype=bool) for v, m in self.fine_valid.items()}
        self._coarse_valid = {v: None if m is None else np.asarray(m, dtype=bool) for v, m in self.coarse_valid.items()}

    # ------------------------------------------------------------------ shapes
    @property
    def grid_sizes(self) -> dict[str, int]:
        return self.fine_sizes

    @property
    def grid_coords(self) -> dict[str, list | None]:
        return self.fine_coords

    @property
    def masked(self) -> list[str]:
        """Variables with missing points (each gets a mask channel)."""
        return [v for v in self.variables if self._fine_valid[v] is not None]

    @property
    def cond_channels(self) -> int:
        return self.channels + len(self.masked) + len(self.static)

    @property
    def coarse_shape(self) -> tuple[int, int]:
        return tuple(n // self.factor for n in self.grid_shape)

    def valid(self, v: str) -> np.ndarray:
        """Where variable ``v`` has data on the fine grid (all True without a mask)."""
        m = self._fine_valid[v]
        return np.ones(self.grid_shape, dtype=bool) if m is None else m

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, fine: xr.Dataset, coarse: xr.Dataset, variables, *, factor: int, grid_dims, sample_dim: str,
            periodic: Sequence[str], static=None, method: str = "bicubic") -> tuple[DownscaleCoder, np.ndarray, np.ndarray]:
        """Fit the constants; returns ``(coder, fine (N, C, H, W), upsampled coarse (N, C, H, W))``."""
        grid_dims = list(grid_dims)
        fine_sizes = {d: int(fine.sizes[d]) for d in grid_dims}
        f = stack(fine, variables, sample_dim, grid_dims)
        c = stack(coarse, variables, sample_dim, grid_dims)
        if c.shape[0] != f.shape[0]:
            raise ValueError(f"fine has {f.shape[0]} samples along {sample_dim!r} but coarse has {c.shape[0]}")
        expected = tuple(n // factor for n in fine_sizes.values())
        if c.shape[2:] != expected:
            raise ValueError(f"coarse grid {_shape(c.shape[2:])} does not match factor {factor} of the fine grid "
                             f"{_shape(f.shape[2:])} (expected {_shape(expected)})")
        fine_valid, coarse_valid, center, scale, attrs = {}, {}, {}, {}, {}
        for k, v in enumerate(variables):
            ever = np.isfinite(f[:, k]).any(0)
            if not ever.any():
                raise ValueError(f"variable {v!r} has no valid (non-NaN) value in the training data")
            fine_valid[v] = None if ever.all() else ever.tolist()
            cever = np.isfinite(c[:, k]).any(0)
            coarse_valid[v] = None if cever.all() else cever.tolist()
            center[v], scale[v] = float(np.nanmean(f[:, k])), float(np.nanstd(f[:, k]))
            check_spread({v: scale[v]}, "downscaled")
            attrs[v] = {a: fine[v].attrs[a] for a in CF_ATTRS if a in fine[v].attrs}
        stat = {}
        for name in _names(static):
            if name not in fine.data_vars:
                raise ValueError(f"static field {name!r} not found in the fine data; available: {sorted(map(str, fine.data_vars))}")
            s = fine[name]
            if set(s.dims) != set(grid_dims):
                raise ValueError(f"static field {name!r} has dims {s.dims}; it must be on the grid dims {grid_dims} only")
            s = np.asarray(s.transpose(*grid_dims).values, dtype=np.float64)
            sd = float(np.nanstd(s))
            stat[name] = np.nan_to_num((s - np.nanmean(s)) / (sd if sd > 0 else 1.0)).tolist()
        coder = cls(variables=list(variables), factor=int(factor), grid_dims=grid_dims, sample_dim=str(sample_dim),
                    fine_sizes=fine_sizes, fine_coords=numeric_coords(fine, grid_dims),
                    coarse_coords=numeric_coords(coarse, grid_dims),
                    coord_attrs={d: dict(fine[d].attrs) if d in fine.coords else {} for d in grid_dims},
                    periodic=list(periodic), method=method, center=center, scale=scale,
                    res_scale={v: 1.0 for v in variables}, attrs=attrs, fine_valid=fine_valid,
                    coarse_valid=coarse_valid, static=stat)
        up = coder.upsample(c)
        res = f - up
        for k, v in enumerate(variables):
            r = float(np.sqrt(np.nanmean(res[:, k] ** 2)))
            coder.res_scale[v] = r if r > 0 else 1e-6 * scale[v]
        return coder, f, up

    # ------------------------------------------------------------------ checks
    def input_grid(self) -> tuple[dict[str, int], dict]:
        return dict(zip(self.grid_dims, self.coarse_shape)), self.coarse_coords

    def _size_hint(self, ds: xr.Dataset) -> str:
        got = tuple(ds.sizes[d] for d in self.grid_dims)
        return (f": the coarse grid {_shape(got)} does not match factor {self.factor} of the fine grid "
                f"{_shape(self.grid_shape)} the model was trained on (expected a coarse grid "
                f"{_shape(self.coarse_shape)} on {tuple(self.grid_dims)})")

    def check_mask(self, c: np.ndarray) -> None:
        """Raise ValueError when the NaN pattern of coarse fields ``c (N, C, h, w)`` differs from training."""
        for k, v in enumerate(self.variables):
            nan = ~np.isfinite(c[:, k])
            ref = self._coarse_valid[v]
            if ref is None:
                if nan.any():
                    raise ValueError(f"coarse variable {v!r} has {int(nan.sum())} NaN value(s) but the model was "
                                     f"trained on {v!r} without missing values; fill or mask them")
                continue
            differ = nan != ~ref[None]
            if differ.any():
                n = int(differ.any(0).sum())
                raise ValueError(f"the NaN mask of coarse variable {v!r} differs from the training mask at {n} "
                                 f"grid point(s) ({int((nan & ref[None]).any(0).sum())} newly missing, "
                                 f"{int((~nan & ~ref[None]).any(0).sum())} valid where training had none)")

    # ------------------------------------------------------------------ tensors
    def upsample(self, c: np.ndarray) -> np.ndarray:
        """Mask-aware interpolation of coarse ``(N, C, h, w)`` to ``(N, C, H, W)``, 0 where the fine grid is missing."""
        flags = tuple(d in self.periodic for d in self.grid_dims)
        up = upsample_tensor(torch.from_numpy(c), self.factor, method=self.method, periodic=flags).numpy()
        for k, v in enumerate(self.variables):
            up[:, k] = np.where(self.valid(v), up[:, k], 0.0)
        return up

    def condition(self, up: np.ndarray) -> torch.Tensor:
        """The conditioning channels ``(N, Cc, H, W)`` float32 from upsampled fields ``(N, C, H, W)``."""
        n, z = up.shape[0], self._affine(torch.from_numpy(up), self.center, self.scale).numpy()
        chans = [np.where(self.valid(v), z[:, k], 0.0) for k, v in enumerate(self.variables)]
        for v in self.masked:
            chans.append(np.broadcast_to(self.valid(v), up.shape[:1] + up.shape[2:]).astype(np.float64))
        for s in self.static.values():
            chans.append(np.broadcast_to(np.asarray(s), (n, *self.grid_shape)))
        return torch.from_numpy(np.stack(chans, axis=1).astype(np.float32))

    def target(self, fine: np.ndarray, up: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised residual ``z (N, C, H, W)`` (0 where missing) and the loss mask (1 valid, 0 missing)."""
        r = np.stack([(fine[:, k] - up[:, k]) / self.res_scale[v] for k, v in enumerate(self.variables)], axis=1)
        mask = np.isfinite(r)
        return torch.from_numpy(np.where(mask, r, 0.0).astype(np.float32)), torch.from_numpy(mask.astype(np.float32))

    def decode(self, z: np.ndarray, up: np.ndarray) -> np.ndarray:
        """Fine fields from residuals ``z (N, M, C, H, W)`` and ``up (N, C, H, W)``; NaN where missing."""
        out = np.empty(z.shape, dtype=np.float32)
        for k, v in enumerate(self.variables):
            x = up[:, None, k] + z[:, :, k].astype(np.float64) * self.res_scale[v]
            out[:, :, k] = np.where(self.valid(v), x, np.nan)
        return out
