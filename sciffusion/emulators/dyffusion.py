"""DYffusion: rollouts that sample along physical time (Cachay et al. 2023; Spherical DYffusion, 2024).

Two networks on normalised states ``z`` and a horizon of ``h`` time steps:

* a **stochastic interpolator** ``I(z_t, z_{t+h}, i) ~ z_{t+i}`` for ``0 < i < h`` (a backbone
  with dropout that stays on at inference, so repeated calls give different interpolants); by
  definition ``I(., ., 0) = z_t`` and ``I(., ., h) = z_{t+h}``. It predicts a correction to the
  linear interpolant.
* a **forecaster** ``F(z_{t+i}, i | z_t) ~ z_{t+h}`` predicting the end of the window from any
  intermediate state (a correction ``z_{t+i} + s_h * net(...)`` scaled by the std of the h-step change).

Training follows the paper (Algorithm 1): the interpolator first, by regression on ``(z_t,
z_{t+h}) -> z_{t+i}``; then the forecaster on the *interpolator's outputs* (dropout on, weights
frozen): ``i ~ U{0..h-1}``, ``loss = |F(I(z_t, z_{t+h}, i), i) - z_{t+h}|^2``.

Sampling (the paper's Algorithm 2, cold sampling along ``i_n = n``): from ``z_{s_0} = z_t``,

.. math::
    \\hat z_{t+h} = F(z_{s_n}, i_n),\\qquad
    z_{s_{n+1}} = I(z_t, \\hat z_{t+h}, i_{n+1}) - I(z_t, \\hat z_{t+h}, i_n) + z_{s_n},

which yields the states at ``t+1 .. t+h`` (``h`` forecaster and ``2h - 2`` interpolator calls per
window); the last state starts the next window. Ensemble members differ through their dropout
masks, drawn per member from the stream ``(seed, window start, member)``.

Same API as :class:`~sciffusion.emulators.Rollout` (``fit``, ``rollout``, ``save``, ``load``);
``steps`` and ``method`` of :meth:`rollout` are ignored (there is no noise-level sampler).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

from sciffusion.data.batches import BatchDataset
from sciffusion.emulators.rollout import default_net, fit_coder
from sciffusion.emulators.rollout_base import RolloutCoder, RolloutModel


class MemberDropout(nn.Module):
    """Dropout whose mask for batch row ``k`` comes from ``generators[k]`` when they are set
    (inference: member ``k``'s mask does not depend on the batch), plain dropout in training."""

    def __init__(self, p: float):
        super().__init__()
        self.p, self.generators = float(p), None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.generators is not None and self.p > 0:
            keep = torch.full(x.shape[1:], 1 - self.p, dtype=x.dtype, device=x.device)
            mask = torch.stack([torch.bernoulli(keep, generator=g) for g in self.generators])
            return x * mask / (1 - self.p)
        return F.dropout(x, self.p, self.training)


def _member_dropout(net: nn.Module) -> nn.Module:
    for name, child in list(net.named_children()):
        if isinstance(child, nn.Dropout):
            setattr(net, name, MemberDropout(child.p))
        else:
            _member_dropout(child)
    return net


class DYffusion(RolloutModel):
    """Interpolator + forecaster rolled out along physical time (see the module docstring).

    Args:
        interpolator, forecaster: backbones ``net(x, c, cond)`` (``c = i / h``); the
            interpolator's ``nn.Dropout`` layers become :class:`MemberDropout`.
        coder: a :class:`~sciffusion.emulators.rollout_base.RolloutCoder` with ``history=1``.
        horizon: ``h`` in time steps (>= 2).
        h_std: per-variable std of the normalised h-step change (scales the forecaster's output).
        sampler: ``{"stochastic": True}``; False turns the interpolator's dropout off (a
            deterministic rollout).
    """

    key, label, emulator = "dyffusion", "a DYffusion model", "sciffusion.emulators.DYffusion"
    coder_class, spec_keys = RolloutCoder, ("horizon", "h_std")

    def __init__(self, interpolator: nn.Module, forecaster: nn.Module, coder: RolloutCoder, *, horizon: int,
                 h_std: dict | None = None, sampler: dict | None = None):
        if int(horizon) < 2:
            raise ValueError(f"horizon must be >= 2 time steps, got {horizon}")
        if coder.history != 1:
            raise ValueError("DYffusion conditions on one state (history=1)")
        self.interpolator, self.forecaster = _member_dropout(interpolator).eval(), forecaster.eval()
        self.coder, self.horizon, self.unit = coder, int(horizon), int(horizon)
        self.h_std = {k: float((h_std or {}).get(k, 1.0)) for k in coder.variables}
        self.sampler = {"stochastic": True, **(sampler or {})}

    # ------------------------------------------------------------------ the two networks
    def _code(self, i, z: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(i, dtype=z.dtype, device=z.device).expand(z.shape[0]) / self.horizon

    def interpolate(self, z0: torch.Tensor, zh: torch.Tensor, i: int, forcing: torch.Tensor | None = None,
                    net: nn.Module | None = None) -> torch.Tensor:
        """``I(z_t, z_{t+h}, i)`` on normalised states ``(B, C, *grid)``; exact at ``i = 0`` and ``i = h``."""
        if i <= 0:
            return z0
        if i >= self.horizon:
            return zh
        net = self.interpolator if net is None else net
        cond = zh if forcing is None else torch.cat([zh, forcing], 1)
        lin = z0 + (zh - z0) * (i / self.horizon)
        return lin + self._scale(z0) * net(z0, self._code(i, z0), cond=cond)

    def forecast(self, zi: torch.Tensor, z0: torch.Tensor, i: int | torch.Tensor, forcing: torch.Tensor | None = None,
                 net: nn.Module | None = None) -> torch.Tensor:
        """``F(z_{t+i}, i | z_t) ~ z_{t+h}`` on normalised states ``(B, C, *grid)``; ``i`` an int or ``(B,)``."""
        net = self.forecaster if net is None else net
        cond = z0 if forcing is None else torch.cat([z0, forcing], 1)
        return zi + self._scale(zi) * net(zi, self._code(i, zi), cond=cond)

    def _scale(self, z: torch.Tensor) -> torch.Tensor:
        s = torch.tensor([self.h_std[k] for k in self.coder.variables], dtype=z.dtype, device=z.device)
        return s.reshape(-1, *([1] * (z.ndim - 2)))

    @contextlib.contextmanager
    def _dropout(self, gens):
        mods = [m for m in self.interpolator.modules() if isinstance(m, MemberDropout)]
        for m in mods:
            m.generators = gens
        try:
            yield
        finally:
            for m in mods:
                m.generators = None

    def _advance(self, hist, k, forcing, gens, settings):
        """One window: the states at ``t+1 .. t+h`` by cold sampling (module docstring)."""
        c = self.coder
        z0 = c.normalize(hist[:, -1])
        f = None if forcing is None else c.normalize_forcing(forcing)
        out, zs = [], z0
        with self._dropout(gens if settings.get("stochastic", True) else None):
            for n in range(self.horizon):
                zh = self.forecast(zs, z0, n, f)
                zs = self.interpolate(z0, zh, n + 1, f) - self.interpolate(z0, zh, n, f) + zs
                out.append(c.denormalize(zs))
        return out

    # ------------------------------------------------------------------ training
    @classmethod
    def fit(cls, ds: xr.Dataset, variables=None, *, grid_dims=None, time_dim: str = "time", sample_dims=None,
            history: int = 1, forcings=None, horizon: int = 4, net: dict | None = None, steps: int = 2000,
            interpolator_steps: int | None = None, batch_size: int = 64, lr: float = 1e-3, warmup_steps: int = 100,
            ema_decay: float = 0.995, dropout: float = 0.15, seed: int = 0, out_dir: str | os.PathLike | None = None,
            device=None, progress: bool = True, max_seconds: float | None = None,
            checkpoint_every: int | None = None, threads: int | None = None) -> DYffusion:
        """Train the interpolator (``interpolator_steps``, default ``steps``), then the forecaster (``steps``).

        Arguments as :meth:`Rollout.fit <sciffusion.emulators.Rollout.fit>`, plus ``horizon`` (h time
        steps per window) and ``dropout`` (the interpolator's, on at inference). Both networks train
        with :class:`~sciffusion.training.Trainer` (its ``loss_fn`` hook) on windows drawn without
        replacement; with ``out_dir`` each is a resumable run (``out_dir/interpolator``,
        ``out_dir/forecaster``, checkpointed every ``checkpoint_every`` steps, default 10%) that a
        killed fit resumes bit for bit, and the trained model is saved in ``out_dir/model`` (what
        ``DYffusion.load(out_dir)`` reads). ``max_seconds``: wall-time budget, half for each network
        (each stops after the step that exceeds its half; ``.losses`` of each says how many ran).
        ``threads``: torch CPU threads while training.
        """
        from sciffusion.nets import build_net
        from sciffusion.training import seeded

        if history != 1:
            raise ValueError("DYffusion conditions on one state: history must be 1")
        coder, x, f = fit_coder(ds, variables, grid_dims, time_dim, sample_dims, 1, forcings)
        h = int(horizon)
        if x.shape[1] <= h:
            raise ValueError(f"need more than horizon = {h} times along {time_dim!r}, got {x.shape[1]}")
        device = torch.device(device or "cpu")
        z = coder.normalize(torch.as_tensor(x)).float()
        fz = None if f is None else coder.normalize_forcing(torch.as_tensor(f)).float()
        dz = (z[:, h:] - z[:, :-h]).transpose(0, 2).reshape(coder.channels, -1).std(1)
        with seeded(seed):  # init and dropout draw from it; the caller's global RNG is left as it was
            spec = default_net(coder, net)
            ispec = {**spec, "kwargs": {**spec["kwargs"], "dropout": dropout}}
            model = cls(build_net(ispec), build_net(spec), coder, horizon=h, h_std=dict(zip(coder.variables, dz.tolist())))
            windows = _Windows(z, fz, h)

            def interp_loss(net, batch, gen):
                w, ff = batch["window"], batch.get("forcing")
                z0, zh = w[:, 0], w[:, -1]
                i = torch.randint(0, h, (len(w),), generator=gen, device=w.device).clamp_min(1)
                code = i.to(z0.dtype) / h
                cond = zh if ff is None else torch.cat([zh, ff], 1)
                pred = z0 + (zh - z0) * code.reshape(-1, *[1] * (z0.ndim - 1)) + model._scale(z0) * net(z0, code, cond=cond)
                return F.mse_loss(pred, w[torch.arange(len(w), device=w.device), i])

            def forecast_loss(net, batch, gen):
                w, ff = batch["window"], batch.get("forcing")
                z0, zh = w[:, 0], w[:, -1]
                i = torch.randint(0, h, (len(w),), generator=gen, device=w.device)
                with torch.no_grad():
                    model.interpolator.train()  # the stochastic interpolator's outputs, as at inference
                    zi = z0.clone()
                    for iv in i.unique().tolist():
                        m = i == iv
                        zi[m] = model.interpolate(z0[m], zh[m], iv, None if ff is None else ff[m])
                return F.mse_loss(model.forecast(zi, z0, i, ff, net=net), zh)

            run = {"windows": windows, "out_dir": out_dir, "batch_size": batch_size, "lr": lr, "warmup_steps": warmup_steps,
                   "ema_decay": ema_decay, "seed": seed, "device": device, "progress": progress,
                   "checkpoint_every": checkpoint_every, "threads": threads,
                   "max_seconds": None if max_seconds is None else max_seconds / 2}
            model.interpolator = _train(model.interpolator, "interpolator", interp_loss, interpolator_steps or steps, **run)
            model.forecaster = _train(model.forecaster, "forecaster", forecast_loss, steps, **run)
        model.interpolator.eval(), model.forecaster.eval()
        if out_dir is not None:  # a run directory whose `latest` names the trained model
            from sciffusion.checkpoint import atomic_write_bytes

            model.save(Path(out_dir) / "model")
            atomic_write_bytes(Path(out_dir) / "latest", b"model")
        return model

    # ------------------------------------------------------------------ persistence
    def spec(self) -> dict:
        from sciffusion.nets import net_spec

        return {**super().spec(), "interpolator": net_spec(self.interpolator), "forecaster": net_spec(self.forecaster)}

    def _checkpoint_content(self) -> tuple[dict, dict]:
        """Both networks' weights (``interpolator.*``, ``forecaster.*``) and ``{"dyffusion": spec}``."""
        weights = {f"{name}.{k}": v.detach().cpu().contiguous()
                   for name, net in (("interpolator", self.interpolator), ("forecaster", self.forecaster))
                   for k, v in net.state_dict().items()}
        return weights, {self.key: self.spec()}

    @classmethod
    def _from_checkpoint(cls, ckpt: dict, device=None) -> DYffusion:
        from sciffusion.nets import build_net

        spec, nets = ckpt["config"][cls.key], {}
        for name in ("interpolator", "forecaster"):
            net = build_net(spec[name])
            net.load_state_dict({k[len(name) + 1 :]: v for k, v in ckpt["weights"].items() if k.startswith(name + ".")})
            nets[name] = net.to(device or "cpu").requires_grad_(False)
        return cls(nets["interpolator"], nets["forecaster"], RolloutCoder.from_dict(spec["coder"]), horizon=spec["horizon"],
                   h_std=spec["h_std"], sampler=spec.get("sampler"))


class _Windows(BatchDataset):
    """Training windows ``{"window": z[s, t : t+h+1] (h+1, C, *grid), "forcing": f[s, t]}`` of
    normalised states ``z (S, T, C, *grid)`` (and forcings), one per start ``(s, t)``."""

    def __init__(self, z: torch.Tensor, fz: torch.Tensor | None, h: int):
        self.z, self.fz, self.h = z, fz, int(h)
        self.starts = torch.tensor([(s, t) for s in range(z.shape[0]) for t in range(z.shape[1] - h)])

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        s, t = self.starts[idx, 0], self.starts[idx, 1]
        out = {"window": torch.stack([self.z[s, t + k] for k in range(self.h + 1)], 1)}
        if self.fz is not None:
            out["forcing"] = self.fz[s, t]
        return out


def _train(net: nn.Module, name: str, loss_fn, steps: int, *, windows: _Windows, out_dir, batch_size: int, lr: float,
           warmup_steps: int, ema_decay: float, seed: int, device, progress: bool, checkpoint_every: int | None,
           threads: int | None, max_seconds: float | None) -> nn.Module:
    """Train one network with :class:`~sciffusion.training.Trainer` (AdamW with weight decay 0.01,
    linear warm-up, gradient clipping at 1) and return its EMA copy, with ``.losses`` of this call."""
    from sciffusion.training import Trainer

    trainer = Trainer(net, windows, out_dir=None if out_dir is None else Path(out_dir) / name,
                      batch_size=min(int(batch_size), len(windows)), lr=lr, weight_decay=0.01,
                      warmup_steps=warmup_steps, ema_decay=ema_decay, seed=seed + (name == "forecaster"),
                      checkpoint_every=checkpoint_every, device=device, loss_fn=loss_fn, progress=progress,
                      config={"dyffusion_training": {"network": name, "horizon": windows.h}})
    history = trainer.fit(int(steps), max_seconds=max_seconds, threads=threads, desc=name)
    ema = trainer.ema.requires_grad_(False)
    ema.losses = np.asarray([r["loss"] for r in history])
    return ema
