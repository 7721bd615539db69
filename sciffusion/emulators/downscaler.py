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
small-scale power) and makes it the default sampler. A third knob, for any sampler, is the noise
temperature of :class:`~sciffusion.emulators.EnsembleEmulator` (:class:`~sciffusion.emulators.TemperedStep`:
the starting draw ``T * sigmas[0] * eps``): it is the one knob that widens a distilled student
(:meth:`~sciffusion.emulators.base.Emulator.with_student`), whose steps are fixed and whose eta only
narrows it; ``calibrate(temperatures=...)`` chooses it with the rest. See ``docs/downscaling.md``.

Missing points (land in an SST analysis) never enter training (masked EDM loss), are NaN in
every generated member, and a coarse input whose NaN mask differs from the training mask is
refused, naming the variable.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch
import xarray as xr

from sciffusion.diffusion import Denoiser
from sciffusion.diffusion.streams import check_rng
from sciffusion.diffusion.schedules import SIGMA_MAX
from sciffusion.emulators.base import Emulator
from sciffusion.emulators.calibrate import STOCHASTIC_CHURN, SamplerCalibration, check_temperature
from sciffusion.emulators.coarsen import coarsen, grid_dims_of, periodic_dims
from sciffusion.emulators.downscale_data import DownscaleCoder, _names, stack
from sciffusion.emulators.ensemble import TemperedStep, check_centred_temperature
from sciffusion.emulators.members import generate as generate_members
from sciffusion.emulators.store import ensemble_output

# DDIM 16 with eta = 1 (fully stochastic): the spread is set by DDIM's steps and eta (Merizzi et al.
# 2025), and calibrate() replaces this with the setting whose spread-skill ratio is closest to 1
DEFAULT_SAMPLER = {"method": "ddim", "steps": 16, "eta": 1.0}


def default_net(coder: DownscaleCoder, net: dict | None = None) -> dict:
    """The backbone spec: a UNet2d, circular along periodic dims, zero-padded otherwise, ``fit_grid="pad"``."""
    from sciffusion.nets import task_spec

    padding = ["circular" if d in coder.periodic else "zeros" for d in coder.grid_dims]
    defaults = {"channels": [32, 64, 128], "blocks_per_level": 1, "attention_levels": [], "padding": padding,
                "fit_grid": "pad"}
    io = {"in_channels": coder.channels, "cond_channels": coder.cond_channels}
    return task_spec(net, "UNet2d", {"UNet2d": (defaults, io)}, "the Downscaler", "UNet2d (a 2-D backbone)")


def _weights_sha(den) -> str:
    state = getattr(den, "state_dict", None)
    if state is None:
        return ""
    h = hashlib.sha256()
    for k, v in sorted(state().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Downscaler(SamplerCalibration, Emulator):
    """Fine-grid ensembles from coarse fields (see the module docstring).

    Build one with :meth:`fit` or :meth:`load`, then call :meth:`downscale`. ``sampler`` holds the
    default ``method``, ``steps`` and ``eta`` (DDIM) or ``s_noise``/``churn`` (``"stochastic"``), and a
    noise ``temperature`` when it is not 1, set by :meth:`calibrate` and stored by :meth:`save` (a
    checkpoint without one samples at temperature 1).
    """

    key, label, emulator, coder_class = "downscaler", "a Downscaler", "sciffusion.emulators.Downscaler", DownscaleCoder

    def __init__(self, denoiser, coder: DownscaleCoder, *, sampler: dict | None = None):
        self.denoiser, self.coder = denoiser, coder
        self.sampler = {**DEFAULT_SAMPLER, **(sampler or {})}
        check_temperature(self.sampler.get("temperature", 1.0), "sampler['temperature']")
        self.history: list[dict] = []

    # ------------------------------------------------------------------ training
    @classmethod
    def fit(cls, fine: xr.Dataset | xr.DataArray, variables=None, *, factor: int, grid_dims=None,
            sample_dim: str = "time", coarse: xr.Dataset | xr.DataArray | None = None, static=None, periodic=None,
            net: dict | None = None, steps: int = 2000, batch_size: int = 32, lr: float = 1e-3,
            warmup_steps: int = 100, ema_decay: float = 0.999, seed: int = 0,
            out_dir: str | os.PathLike | None = None, device=None, progress: bool = True,
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
        from sciffusion.training import TensorPairs, seeded

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
        data = TensorPairs(x, coder.condition(up), mask)
        with seeded(seed):  # the caller's global RNG is left as it was
            den = Denoiser(build_net(default_net(coder, net)), sigma_data=1.0)
            return cls(den, coder)._train_denoiser(data, steps, batch_size=batch_size, threads=threads, out_dir=out_dir,
                                                   lr=lr, warmup_steps=warmup_steps, ema_decay=ema_decay, seed=seed,
                                                   checkpoint_every=checkpoint_every, device=device, progress=progress)

    # ------------------------------------------------------------------ generation
    def check(self, coarse: xr.Dataset | xr.DataArray) -> None:
        """Raise ValueError naming what differs (variables, grid, factor, units, NaN mask) from training."""
        ds = self.coder.dataset(coarse)
        self.coder.check(ds)
        self.coder.check_mask(stack(ds, self.coder.variables, self.coder.sample_dim, self.coder.grid_dims))

    def _draw(self, cond, up, block, settings, options, seed, batch_size, progress, device) -> np.ndarray:
        """Members ``block`` for every condition: fine fields ``(N, len(block), C, H, W)`` (NaN where missing)."""
        c = self.coder
        check_centred_temperature(options, settings.get("temperature", 1.0))
        step = TemperedStep(settings["method"], settings.get("temperature", 1.0))  # a fresh step per block
        z = generate_members(self.denoiser, cond, block, event_shape=(c.channels, *c.grid_shape), seed=seed,
                             batch_size=batch_size, steps=int(settings["steps"]), method=step,
                             progress=progress, device=device, sigma_max=SIGMA_MAX, **options)
        return c.decode(z.numpy(), up)

    @torch.no_grad()
    def downscale(self, coarse: xr.Dataset | xr.DataArray, n_members: int = 16, *, steps: int | None = None,
                  eta: float | None = None, method: str | None = None, s_noise: float | None = None,
                  temperature: float | None = None, batch_size: int | None = None, seed: int = 0,
                  out: str | os.PathLike | None = None, mode: str = "w-", member_chunk: int = 8,
                  progress: bool = True, device=None, rng: str = "torch") -> xr.Dataset:
        """Draw ``n_members`` fine fields for every coarse field.

        Args:
            coarse: the trained variables on ``(sample_dim, *coarse grid)`` (block means on the
                grid the model was trained on; NaN exactly where the training coarse data was).
            n_members: ensemble size; member ``m`` of sample ``i`` comes from the stream ``(seed, i, m)``,
                so it is the same draw whatever ``n_members``, ``batch_size`` or ``member_chunk``.
            steps, eta, method, s_noise: sampler settings (default ``self.sampler``: DDIM, calibrated
                if :meth:`calibrate` ran); ``eta`` applies to ``method="ddim"``, ``s_noise`` (and the
                sampler's ``churn``, default 40) to ``method="stochastic"``.
            temperature: noise temperature (> 0; default the sampler's, 1 when it has none): the sampler
                starts from ``temperature * sigmas[0] * eps`` (:class:`~sciffusion.emulators.TemperedStep`),
                on a distilled student's own first level too; above 1 widens the ensemble.
            batch_size: samples per denoiser batch (default 64).
            rng: the member streams, ``"torch"`` (default) or ``"philox"`` (counter-based, a batch's noise in one
                pass; other numbers, recorded in the ``sampler`` attribute): see
                :func:`sciffusion.diffusion.sample.stream_generators`.
            out: zarr path: members are written in blocks of ``member_chunk`` and with
                ``mode="resume"`` a rerun computes only the missing blocks (a store written with
                another model, sampler, seed or input is refused); ``"w"`` overwrites, ``"w-"`` refuses.
        Returns:
            Dataset ``v (sample_dim, member, *fine grid)`` with member ids ``0..n_members-1``, the
            training grid's coordinates, the input's sample coordinates, CF attributes of the
            training data, NaN where the training data had none, and provenance in ``attrs``.
        """
        c = self.coder
        ds = c.dataset(coarse)
        c.check(ds)
        if int(n_members) < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members}")
        x = stack(ds, c.variables, c.sample_dim, c.grid_dims)
        c.check_mask(x)
        up = c.upsample(x)
        cond = c.condition(up)
        given = {"steps": steps, "eta": eta, "method": method, "s_noise": s_noise, "temperature": temperature}
        settings = {**self.sampler, **{k: v for k, v in given.items() if v is not None}}
        settings["temperature"] = check_temperature(settings.get("temperature", 1.0))
        for name, value, applies in (("eta", eta, "ddim"), ("s_noise", s_noise, "stochastic")):
            if value is not None and settings["method"] != applies:
                raise TypeError(f"{name} applies to method {applies!r} only, not {settings['method']!r}")
        check_rng(rng)
        options = _sampler_options(settings)
        sampler = {"method": settings["method"], "steps": settings["steps"], **options}
        if rng != "torch":  # the default leaves the record as it was before the choice existed
            sampler["rng"] = rng
        if settings["temperature"] != 1.0:  # at 1 the record is the one written before the knob existed
            sampler["temperature"] = settings["temperature"]
        provenance = self.provenance(f"downscale(n_members={n_members}, seed={seed})", source=ds.attrs,
                                     title=f"sciffusion downscaled ensemble ({n_members} members, {c.factor}x finer)",
                                     downscale_factor=c.factor, upsample_method=c.method,
                                     weights_sha256=_weights_sha(self.denoiser),
                                     input_sha256=hashlib.sha256(x.tobytes()).hexdigest(),
                                     sampler=json.dumps(sampler, sort_keys=True), seed=int(seed))
        batch_size = int(batch_size or 64)
        n = x.shape[0]
        coords = {k: v for k, v in ds.coords.items() if set(v.dims) <= {c.sample_dim} and k not in c.grid_dims}
        for d in c.grid_dims:
            if c.fine_coords.get(d) is not None:
                coords[d] = xr.Variable(d, np.asarray(c.fine_coords[d]), c.coord_attrs.get(d, {}))
        attrs = {k: v for k, v in ds.attrs.items() if k not in provenance}

        def draw(block):
            return self._draw(cond, up, block, settings, {**options, "rng": rng}, seed, batch_size, progress, device)

        template = xr.Dataset({v: ([c.sample_dim, *c.grid_dims], np.zeros((n, *c.grid_shape), np.float32), dict(c.attrs[v]))
                               for v in c.variables}, coords=coords, attrs=attrs)
        return ensemble_output(out, template, int(n_members), draw, member_axis=1, attrs=provenance,
                               member_attrs={"long_name": "ensemble member"}, member_chunk=member_chunk, mode=mode,
                               always_missing={v: ~c.valid(v) for v in c.masked})


def _sampler_options(settings: dict) -> dict[str, float]:
    """The keyword options of :func:`sciffusion.diffusion.sample` a sampler setting carries (a distilled
    student's carries its noise levels)."""
    if "sigmas" in settings:
        return {"eta": float(settings["eta"]), "sigmas": list(settings["sigmas"])}
    if settings["method"] == "ddim":
        return {"eta": float(settings["eta"])}
    if settings["method"] == "stochastic":
        return {"churn": float(settings.get("churn", STOCHASTIC_CHURN)), "s_noise": float(settings.get("s_noise", 1.0))}
    return {}


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

