"""Super-resolution ensembles: a conditional EDM model of the residual from an interpolated coarse field.

The CorrDiff recipe (Mardani et al. 2025, "Residual corrective diffusion modeling for km-scale
atmospheric downscaling"), with the interpolation as the mean: a fine field ``x`` is written as
``x = upsample(coarse) + r`` and a diffusion model learns ``p(r | upsample(coarse), mask, static)``
(see :mod:`sciffusion.emulators.downscale_data` for the tensors). Coarse inputs are block means
(:func:`~sciffusion.emulators.coarsen`) by a factor of 4 to 8.

The spread knob is the DDIM sampler (Merizzi et al. 2025, "Controlling ensemble variance in
diffusion models: an application for reanalyses downscaling"): ``eta = 0`` is the deterministic
probability-flow sampler, ``eta = 1`` the DDPM posterior, and the step count changes the
variance too. A second knob is EDM's stochastic sampler with its noise inflation ``s_noise``
(Karras et al. 2022 set it slightly above 1 "to counteract the loss of detail"): it restores the
small-scale power a young model's members lack. :meth:`Downscaler.variance_curve` tabulates the
ensemble variance (and, given the truth, spread-skill and the high-wavenumber power error)
against ``(steps, eta)`` and ``(steps, s_noise)``, and :meth:`Downscaler.calibrate` picks the
setting closest to a spread-skill ratio of 1 on validation data (optionally also to the truth's
small-scale power) and makes it the default sampler. See ``docs/downscaling.md``.

Missing points (land in an SST analysis) never enter training (masked EDM loss), are NaN in
every generated member, and a coarse input whose NaN mask differs from the training mask is
refused, naming the variable.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from sciffusion.diffusion import Denoiser
from sciffusion.diffusion.schedules import SIGMA_MAX
from sciffusion.emulators.coarsen import coarsen, grid_dims_of, periodic_dims
from sciffusion.emulators.downscale_data import DownscaleCoder, _names, stack
from sciffusion.emulators.members import generate as generate_members
from sciffusion.data.provenance import generated_attrs
from sciffusion.emulators.store import EnsembleStore
from sciffusion.metrics import band_power_ratio

DEFAULT_SAMPLER = {"method": "ddim", "steps": 16, "eta": 1.0}
STOCHASTIC_CHURN = 40.0  # EDM's S_churn; with <= 96 steps it is capped at gamma = sqrt(2) - 1 per step


class _Triples(torch.utils.data.Dataset):
    """Training items ``{"x": residual, "cond": condition, "mask": valid}`` for the Trainer."""

    def __init__(self, x, cond, mask):
        self.x, self.cond, self.mask = x, cond, mask

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "cond": self.cond[i], "mask": self.mask[i]}

    def batch(self, idx):
        return {"x": self.x[idx], "cond": self.cond[idx], "mask": self.mask[idx]}


def default_net(coder: DownscaleCoder, net: dict | None = None) -> dict:
    """The backbone spec: a UNet2d, circular along periodic dims, zero-padded otherwise, ``fit_grid="pad"``."""
    spec = dict(net or {})
    name = spec.get("name", "UNet2d")
    if name != "UNet2d":
        raise ValueError(f"the Downscaler needs a 2-D backbone (UNet2d), got {name!r}")
    padding = ["circular" if d in coder.periodic else "zeros" for d in coder.grid_dims]
    kwargs = {"channels": [32, 64, 128], "blocks_per_level": 1, "attention_levels": [], "padding": padding,
              "fit_grid": "pad", **dict(spec.get("kwargs") or {}),
              "in_channels": coder.channels, "cond_channels": coder.cond_channels}
    return {"name": "UNet2d", "kwargs": kwargs}


def _weights_sha(den) -> str:
    state = getattr(den, "state_dict", None)
    if state is None:
        return ""
    h = hashlib.sha256()
    for k, v in sorted(state().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Downscaler:
    """Fine-grid ensembles from coarse fields (see the module docstring).

    Build one with :meth:`fit` or :meth:`load`, then call :meth:`downscale`. ``sampler`` holds the
    default ``method``, ``steps`` and ``eta`` (DDIM) or ``s_noise``/``churn`` (``"stochastic"``), set by
    :meth:`calibrate` and stored by :meth:`save`.
    """

    def __init__(self, denoiser, coder: DownscaleCoder, *, sampler: dict | None = None,
                 checkpoint: str | None = None, checkpoint_sha256: str | None = None):
        self.denoiser, self.coder = denoiser, coder
        self.sampler = {**DEFAULT_SAMPLER, **(sampler or {})}
        self.checkpoint, self.checkpoint_sha256 = checkpoint, checkpoint_sha256
        self.history: list[dict] = []
        self.calibration = None

    # ------------------------------------------------------------------ training
    @classmethod
    def fit(cls, fine: xr.Dataset | xr.DataArray, variables=None, *, factor: int, grid_dims=None,
            sample_dim: str = "time", coarse: xr.Dataset | xr.DataArray | None = None, static=None, periodic=None,
            net: dict | None = None, steps: int = 2000, batch_size: int = 32, lr: float = 1e-3,
            warmup_steps: int = 100, ema_decay: float = 0.999, seed: int = 0,
            out_dir: str | os.PathLike | None = None, device=None, progress: bool = False,
            checkpoint_every: int | None = None, threads: int | None = None) -> Downscaler:
        """Train on fine fields ``v (sample_dim, *grid)`` (NaN where missing).

        Args:
            variables: variables to downscale (default: every variable on the grid dims that is
                not a static field).
            factor: coarsening factor (the fine grid must be divisible by it).
            grid_dims: the two grid dims (default: the last two dims of the first gridded variable).
            sample_dim: the dim along which samples (times) are stacked.
            coarse: the coarse condition on the coarse grid (default: ``coarsen(fine, factor)``,
                block means over valid points). Its mask must be the block-wise union of the fine one.
            static: names of static fine-grid fields of ``fine`` (orography, land fraction) to condition on.
            periodic: periodic grid dims (default: global longitudes); periodic dims wrap in the
                interpolation and the U-Net, the others are zero-padded.
            net: backbone spec ``{"kwargs": {...}}`` for :class:`~sciffusion.nets.UNet2d` (channel
                counts are filled in); see :func:`default_net`.
            steps, batch_size, lr, warmup_steps, ema_decay, seed: training (:class:`~sciffusion.training.Trainer`).
            out_dir: checkpoint directory for a resumable run (None: in memory).
            checkpoint_every: steps between checkpoints of a run with ``out_dir`` (default 10% of
                ``steps``, at most 500); a killed run resumes from the last one, bit for bit.
            threads: torch CPU threads while training (default: leave torch's setting).
        """
        from sciffusion.nets import build_net
        from sciffusion.training import Trainer, seeded

        fine = fine.to_dataset() if isinstance(fine, xr.DataArray) else fine
        grid_dims = grid_dims_of(fine, grid_dims)
        if len(grid_dims) != 2:
            raise ValueError(f"the Downscaler works on two grid dims, got {grid_dims}")
        statics = _names(static)
        variables = _names(variables) or [str(v) for v in fine.data_vars
                                          if all(d in fine[v].dims for d in grid_dims) and str(v) not in statics]
        missing = [v for v in variables if v not in fine.data_vars]
        if missing:
            raise ValueError(f"variable(s) {missing} not found in the fine data; available: {sorted(map(str, fine.data_vars))}")
        if not variables:
            raise ValueError(f"no variable of the fine data lies on the grid dims {grid_dims}")
        if coarse is None:
            coarse = coarsen(fine[variables], factor, grid_dims=grid_dims)
        coarse = coarse.to_dataset() if isinstance(coarse, xr.DataArray) else coarse
        lacking = [v for v in variables if v not in coarse.data_vars]
        if lacking:
            raise ValueError(f"the coarse data lacks variable(s) {lacking}")
        per = periodic_dims(fine, grid_dims, periodic)
        coder, f, up = DownscaleCoder.fit(fine, coarse, variables, factor=factor, grid_dims=grid_dims,
                                          sample_dim=sample_dim, periodic=per, static=statics)
        coder.check(coarse)
        _check_mask_pair(coder, stack(coarse, variables, sample_dim, grid_dims))
        x, mask = coder.target(f, up)
        data = _Triples(x, coder.condition(up), mask)
        with seeded(seed):  # the caller's global RNG is left as it was
            den = Denoiser(build_net(default_net(coder, net)), sigma_data=1.0)
            spec = {"coder": coder.to_dict(), "sampler": dict(DEFAULT_SAMPLER)}
            trainer = Trainer(den, data, out_dir=out_dir, batch_size=min(batch_size, len(data)), lr=lr,
                              warmup_steps=warmup_steps, ema_decay=ema_decay, seed=seed, checkpoint_every=checkpoint_every,
                              device=device, config={"downscaler": spec}, progress=progress)
            trainer.fit(steps, threads=threads)
        model = cls(trainer.ema.eval().requires_grad_(False), coder)
        model.history, model.last_record = trainer.history, trainer.last_record
        if out_dir is not None:
            from sciffusion.checkpoint import resolve, sha256

            d = resolve(out_dir)
            model.checkpoint, model.checkpoint_sha256 = str(d), sha256(d / "ema.safetensors")
        return model

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write a checkpoint directory (safetensors weights + JSON config, atomically)."""
        from sciffusion.checkpoint import save_task

        spec = {"coder": self.coder.to_dict(), "sampler": dict(self.sampler)}
        path, self.checkpoint_sha256 = save_task(path, self.denoiser, "downscaler", spec)
        self.checkpoint = str(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, device=None) -> Downscaler:
        """Load a checkpoint written by :meth:`save` or by a :meth:`fit` run with ``out_dir``."""
        from sciffusion.checkpoint import load_task

        den, spec, d, sha = load_task(path, "downscaler", "a Downscaler", device=device)
        return cls(den, DownscaleCoder.from_dict(spec["coder"]), sampler=spec.get("sampler"), checkpoint=str(d),
                   checkpoint_sha256=sha)

    # ------------------------------------------------------------------ generation
    def check(self, coarse: xr.Dataset | xr.DataArray) -> None:
        """Raise ValueError naming what differs (variables, grid, factor, units, NaN mask) from training."""
        ds = self._dataset(coarse)
        self.coder.check(ds)
        self.coder.check_mask(stack(ds, self.coder.variables, self.coder.sample_dim, self.coder.grid_dims))

    def _dataset(self, coarse) -> xr.Dataset:
        if isinstance(coarse, xr.DataArray):
            name = coarse.name if coarse.name is not None else self.coder.variables[0]
            return coarse.to_dataset(name=name)
        return coarse

    def _draw(self, cond, up, block, settings, options, seed, batch_size, progress, device) -> np.ndarray:
        """Members ``block`` for every condition: fine fields ``(N, len(block), C, H, W)`` (NaN where missing)."""
        c = self.coder
        z = generate_members(self.denoiser, cond, block, event_shape=(c.channels, *c.grid_shape), seed=seed,
                             batch_size=batch_size, steps=int(settings["steps"]), method=settings["method"],
                             progress=progress, device=device, sigma_max=SIGMA_MAX, **options)
        return c.decode(z.numpy(), up)

    @torch.no_grad()
    def downscale(self, coarse: xr.Dataset | xr.DataArray, n_members: int = 16, *, steps: int | None = None,
                  eta: float | None = None, method: str | None = None, s_noise: float | None = None,
                  batch_size: int | None = None, seed: int = 0,
                  out: str | os.PathLike | None = None, mode: str = "w-", member_chunk: int = 8,
                  progress: bool = False, device=None) -> xr.Dataset:
        """Draw ``n_members`` fine fields for every coarse field.

        Args:
            coarse: the trained variables on ``(sample_dim, *coarse grid)`` (block means on the
                grid the model was trained on; NaN exactly where the training coarse data was).
            n_members: ensemble size; member ``m`` of sample ``i`` comes from the stream ``(seed, i, m)``,
                so it is the same draw whatever ``n_members``, ``batch_size`` or ``member_chunk``.
            steps, eta, method, s_noise: sampler settings (default ``self.sampler``: DDIM, calibrated
                if :meth:`calibrate` ran); ``eta`` applies to ``method="ddim"``, ``s_noise`` (and the
                sampler's ``churn``, default 40) to ``method="stochastic"``.
            batch_size: samples per denoiser batch (default 64).
            out: zarr path: members are written in blocks of ``member_chunk`` and with
                ``mode="resume"`` a rerun computes only the missing blocks (a store written with
                another model, sampler, seed or input is refused); ``"w"`` overwrites, ``"w-"`` refuses.
        Returns:
            Dataset ``v (sample_dim, member, *fine grid)`` with member ids ``0..n_members-1``, the
            training grid's coordinates, the input's sample coordinates, CF attributes of the
            training data, NaN where the training data had none, and provenance in ``attrs``.
        """
        c = self.coder
        ds = self._dataset(coarse)
        c.check(ds)
        if int(n_members) < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members}")
        x = stack(ds, c.variables, c.sample_dim, c.grid_dims)
        c.check_mask(x)
        up = c.upsample(x)
        cond = c.condition(up)
        given = {"steps": steps, "eta": eta, "method": method, "s_noise": s_noise}
        settings = {**self.sampler, **{k: v for k, v in given.items() if v is not None}}
        for name, value, applies in (("eta", eta, "ddim"), ("s_noise", s_noise, "stochastic")):
            if value is not None and settings["method"] != applies:
                raise TypeError(f"{name} applies to method {applies!r} only, not {settings['method']!r}")
        options = _sampler_options(settings)
        provenance = self._provenance(ds, settings, seed, n_members, x)
        batch_size = int(batch_size or 64)
        n = x.shape[0]
        coords = {k: v for k, v in ds.coords.items() if set(v.dims) <= {c.sample_dim} and k not in c.grid_dims}
        for d in c.grid_dims:
            if c.fine_coords.get(d) is not None:
                coords[d] = xr.Variable(d, np.asarray(c.fine_coords[d]), c.coord_attrs.get(d, {}))
        dims = [c.sample_dim, "member", *c.grid_dims]
        attrs = {k: v for k, v in ds.attrs.items() if k not in provenance}

        def draw(block):
            return self._draw(cond, up, block, settings, options, seed, batch_size, progress, device)

        if out is None:
            y = draw(range(int(n_members)))
            result = xr.Dataset({v: (dims, y[:, :, k], dict(c.attrs[v])) for k, v in enumerate(c.variables)},
                                coords=coords, attrs={**attrs, **provenance})
            result = result.assign_coords(member=np.arange(int(n_members)))
            result["member"].attrs.update(long_name="ensemble member")
            return result
        template = xr.Dataset({v: ([c.sample_dim, *c.grid_dims], np.zeros((n, *c.grid_shape), np.float32), dict(c.attrs[v]))
                               for v in c.variables}, coords=coords, attrs=attrs)
        store = EnsembleStore(out, template, int(n_members), member_chunk=member_chunk, member_axis=1,
                              attrs=provenance, mode=mode, always_missing={v: ~c.valid(v) for v in c.masked})
        for block in store.missing():
            y = draw(block)
            store.write(block, {v: y[:, :, k] for k, v in enumerate(c.variables)}, {v: dims for v in c.variables})
        store.finalize()
        return store.open()

    def _provenance(self, ds, settings, seed, n_members, x) -> dict[str, Any]:
        from sciffusion import __version__

        sampler = {"method": settings["method"], "steps": settings["steps"], **_sampler_options(settings)}
        described = generated_attrs(ds.attrs, f"sciffusion downscaled ensemble ({n_members} members, "
                                    f"{self.coder.factor}x finer)", "sciffusion.emulators.Downscaler")
        return {**described, "sciffusion_version": __version__, "emulator": "sciffusion.emulators.Downscaler",
                "downscale_factor": self.coder.factor, "upsample_method": self.coder.method,
                "checkpoint": str(self.checkpoint or ""), "checkpoint_sha256": str(self.checkpoint_sha256 or ""),
                "weights_sha256": _weights_sha(self.denoiser), "input_sha256": hashlib.sha256(x.tobytes()).hexdigest(),
                "sampler": json.dumps(sampler, sort_keys=True), "seed": int(seed),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "history": f"Downscaler.downscale(n_members={n_members}, seed={seed})"}

    # ------------------------------------------------------------------ spread control
    def variance_curve(self, coarse, fine=None, *, steps=(4, 8, 16, 32), etas=(0.0, 0.25, 0.5, 0.75, 1.0),
                       s_noises=(), n_members: int = 8, seed: int = 0, batch_size: int | None = None, device=None):
        """Ensemble variance (and, given ``fine``, spread, RMSE, spread-skill ratio, CRPS and the
        high-wavenumber power error) for every DDIM ``(steps, eta)`` and every EDM-stochastic
        ``(steps, s_noise)``: a :class:`pandas.DataFrame`, one row per setting.

        Columns: ``method, steps, eta, s_noise, variance`` (mean ensemble variance over valid points),
        and with ``fine``: ``spread`` (sqrt of the (M+1)/M-corrected variance), ``rmse`` (of the
        ensemble mean), ``ssr = spread / rmse``, ``crps``, and ``high_k_error`` (the members' power
        over the truth's in the top half of wavenumbers, minus 1: :func:`sciffusion.metrics.band_power_ratio`;
        NaN where the grid has missing points). With one variable these are in its units; with
        several, each variable is first divided by its training standard deviation.
        """
        import pandas as pd

        c = self.coder
        truth = None
        if fine is not None:
            fine = self._dataset(fine)
            missing = [v for v in c.variables if v not in fine.data_vars]
            if missing:
                raise ValueError(f"the fine validation data lacks variable(s) {missing}")
            truth = stack(fine, c.variables, c.sample_dim, c.grid_dims)
        settings = [{"method": "ddim", "steps": int(s), "eta": float(e), "s_noise": float("nan")}
                    for s in steps for e in etas]
        settings += [{"method": "stochastic", "steps": int(s), "eta": float("nan"), "s_noise": float(sn)}
                     for s in steps for sn in s_noises]
        rows = []
        for row in settings:
            kw = {"eta": row["eta"]} if row["method"] == "ddim" else {"s_noise": row["s_noise"]}
            ens = self.downscale(coarse, n_members, steps=row["steps"], method=row["method"], seed=seed,
                                 batch_size=batch_size, device=device, **kw)
            y = np.stack([ens[v].values for v in c.variables], axis=2)  # (N, M, C, H, W)
            rows.append({**row, **_scores(y, truth, c)})
        return pd.DataFrame(rows)

    def calibrate(self, coarse_val, fine_val, *, steps=(4, 8, 16, 32), etas=(0.0, 0.25, 0.5, 0.75, 1.0),
                  s_noises=(), criterion: str = "ssr", n_members: int = 8, target: float = 1.0,
                  spectrum_tol: float = 0.1,
                  apply: bool = True, seed: int = 0, batch_size: int | None = None, device=None):
        """Choose the sampler setting that is best calibrated on validation data.

        Runs :meth:`variance_curve` with the truth ``fine_val`` over DDIM ``(steps, eta)`` and, when
        ``s_noises`` are given, EDM-stochastic ``(steps, s_noise)``, and picks the row minimising
        ``|ssr - target|`` (``criterion="ssr"``), ``|ssr - target| + |high_k_error|``
        (``criterion="ssr+spectrum"``: spread and small-scale power both right), or ``|ssr - target|``
        among the rows whose ``|high_k_error| <= spectrum_tol`` (``criterion="ssr|spectrum"``: the
        spectrum as a constraint; the ``ssr+spectrum`` row when none meets it), see
        :func:`choose_setting`. With ``apply`` the
        chosen setting becomes the default sampler (``self.sampler``, stored by :meth:`save`).
        Returns the table (also kept as ``self.calibration``), the chosen row flagged in ``chosen``.
        """
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}; got {criterion!r}")
        table = self.variance_curve(coarse_val, fine_val, steps=steps, etas=etas, s_noises=s_noises,
                                    n_members=n_members, seed=seed, batch_size=batch_size, device=device)
        best = choose_setting(table, criterion, target=target, spectrum_tol=spectrum_tol)
        table["chosen"] = table.index == best
        if apply:
            self.apply_setting(table.loc[best])
        self.calibration = table
        return table

    def apply_setting(self, row) -> dict:
        """Make a calibration-table row (``method``, ``steps`` and ``eta`` or ``s_noise``) the default sampler."""
        sampler = {"method": str(row["method"]), "steps": int(row["steps"])}
        if sampler["method"] == "ddim":
            sampler["eta"] = float(row["eta"])
        else:
            sampler.update(s_noise=float(row["s_noise"]), churn=STOCHASTIC_CHURN)
        self.sampler = sampler
        return sampler


CRITERIA = ("ssr", "ssr+spectrum", "ssr|spectrum")


def choose_setting(table, criterion: str = "ssr", *, target: float = 1.0, spectrum_tol: float = 0.1) -> int:
    """Index of the calibration row ``criterion`` picks (columns ``ssr`` and ``high_k_error``).

    ``"ssr"``: least ``|ssr - target|``; ``"ssr+spectrum"``: least ``|ssr - target| + |high_k_error|``;
    ``"ssr|spectrum"``: least ``|ssr - target|`` among rows with ``|high_k_error| <= spectrum_tol``,
    falling back to ``"ssr+spectrum"`` when no row meets the tolerance."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}; got {criterion!r}")
    miss = (table["ssr"] - target).abs()
    if criterion == "ssr":
        return int(miss.idxmin())
    if table["high_k_error"].isna().all():
        raise ValueError(f"criterion={criterion!r} needs complete validation fields (the high-wavenumber "
                         "power is undefined on a grid with missing points); use criterion='ssr'")
    if criterion == "ssr|spectrum":
        ok = table["high_k_error"].abs() <= spectrum_tol
        if bool(ok.any()):
            return int(miss[ok].idxmin())
    return int((miss + table["high_k_error"].abs()).idxmin())


def _sampler_options(settings: dict) -> dict[str, float]:
    """The keyword options of :func:`sciffusion.diffusion.sample` a sampler setting carries."""
    if settings["method"] == "ddim":
        return {"eta": float(settings["eta"])}
    if settings["method"] == "stochastic":
        return {"churn": float(settings.get("churn", STOCHASTIC_CHURN)), "s_noise": float(settings.get("s_noise", 1.0))}
    return {}


def _scores(y: np.ndarray, truth: np.ndarray | None, c: DownscaleCoder) -> dict[str, float]:
    """Pooled scores of ensembles ``y (N, M, C, H, W)`` against ``truth (N, C, H, W)`` over valid points."""
    scale = np.array([1.0 if c.channels == 1 else c.scale[v] for v in c.variables])[None, None, :, None, None]
    y = y.astype(np.float64) / scale
    m = y.shape[1]
    var = y.var(axis=1, ddof=1) if m > 1 else np.zeros_like(y[:, 0])
    out = {"variance": float(np.nanmean(var))}
    if truth is None:
        return out
    t = truth / scale[:, 0]
    ok = np.isfinite(t) & np.isfinite(var)
    err = y.mean(1) - t
    spread = float(np.sqrt(np.mean(var[ok]) * (m + 1) / m))
    rmse = float(np.sqrt(np.mean(err[ok] ** 2)))
    skill = np.abs(y - t[:, None]).mean(1)
    pair = np.abs(y[:, :, None] - y[:, None]).mean((1, 2)) / 2
    out.update(spread=spread, rmse=rmse, ssr=spread / rmse if rmse > 0 else float("nan"),
               crps=float(np.mean((skill - pair)[ok])))
    complete = np.isfinite(t).all() and np.isfinite(y).all() and min(t.shape[-2:]) >= 4
    out["high_k_error"] = band_power_ratio(y, t) - 1.0 if complete else float("nan")
    return out


def _check_mask_pair(coder: DownscaleCoder, c: np.ndarray) -> None:
    """At training: the coarse mask must be the block-wise union of the fine mask (a condition file
    masked differently from its target is refused, naming the variable)."""
    f = coder.factor
    for k, v in enumerate(coder.variables):
        valid = coder.valid(v)
        h, w = valid.shape
        expect = valid.reshape(h // f, f, w // f, f).any((1, 3))
        have = np.isfinite(c[:, k]).any(0)
        differ = expect != have
        if differ.any():
            raise ValueError(f"the NaN mask of coarse variable {v!r} differs from the mask of the fine target at "
                             f"{int(differ.sum())} coarse grid point(s) (coarse cells with valid fine points must be "
                             f"valid, cells without must be NaN)")

