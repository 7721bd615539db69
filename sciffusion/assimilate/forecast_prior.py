r"""A trained conditional diffusion prior ``x | forecast`` for the analysis step.

Issue 25's filter (b): instead of a prior estimated from the forecast ensemble at each cycle
(:func:`~sciffusion.assimilate.ensemble_prior`), a diffusion model learns once, offline, the law of
the true state given one forecast member, :math:`p(x_t \mid x^f_t)`, and the analysis draws each
member from :math:`p(x_t \mid x^{f,i}_t, y_t) \propto p(y_t \mid x_t)\, p(x_t \mid x^{f,i}_t)` with a
posterior sampler of :mod:`sciffusion.inverse`. The prior carries the forecast's error statistics
(flow-dependent, non-Gaussian, learned from the model) instead of the ensemble's sample covariance.

Training pairs from a :class:`~sciffusion.systems.base.System`: a truth trajectory
:math:`x_0, x_1, \dots` ``interval`` apart; a stand-in for the previous analysis
:math:`x^a_{t-1} = x_{t-1} + e`, :math:`e \sim N(0, \epsilon^2 I)` with ``perturbation`` :math:`\epsilon`
the typical analysis error; the forecast :math:`x^f_t = M(x^a_{t-1})` over the interval; the pair is
(target :math:`x_t`, condition :math:`x^f_t`). The network learns the normalised forecast error
:math:`r = (x_t - x^f_t) / s` (``s`` the RMS forecast error over the pairs, one number) given the
forecast normalised like the window prior's states, :math:`(x^f - \mu) / \sigma_{clim}` per entry.
:class:`ForecastDenoiser` turns it into a denoiser of the state itself: with
:math:`x_\sigma = x_0 + \sigma \epsilon`, :math:`r_{\sigma/s} = (x_\sigma - x^f)/s` is ``r`` at noise
level :math:`\sigma / s`, so

.. math::
    D(x_\sigma, \sigma;\ x^f) = x^f + s\, D_r\big((x_\sigma - x^f)/s,\ \sigma/s;\ (x^f - \mu)/\sigma_{clim}\big)

exactly, and the analysis runs in the state's own coordinates with any operator, linear or not.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sciffusion.assimilate.window_prior import _NETS, _from_system, _layout
from sciffusion.diffusion import Denoiser, karras_sigmas
from sciffusion.diffusion.sample import forward_step, step_function, step_keywords, step_name
from sciffusion.inverse import sample as posterior_sample
from sciffusion.inverse.api import DEFAULT_SAMPLER
from sciffusion.nets import build_net, net_spec, task_spec
from sciffusion.systems.base import System, check_positive, member_generator, steps_in
from sciffusion.training import TensorPairs, Trainer, seeded

_COND_KEY = {"PeriodicConv1d": "cond_channels", "UNet2d": "cond_channels", "MLP": "cond_features"}


class ForecastDenoiser(nn.Module):
    """The conditional denoiser of the state ``(x, sigma, cond=x_f) -> E[x_0 | x_sigma, x_f]`` (module docstring).

    ``x`` and ``cond`` are ``(B, *state)`` in the state's units; ``scale`` is ``s``, the unit of the noise
    levels the analysis uses, and ``sigma_data`` the prior's scale in state units (``s`` times the net's)."""

    def __init__(self, denoiser: nn.Module, state_shape: tuple[int, ...], layout: tuple[int, ...],
                 mean: torch.Tensor, std: torch.Tensor, scale: float):
        super().__init__()
        self.denoiser, self.event_shape, self.layout = denoiser, tuple(state_shape), tuple(layout)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float64))
        self.scale = float(scale)
        self.sigma_data = self.scale * float(getattr(denoiser, "sigma_data", 1.0))

    def forward(self, x: torch.Tensor, sigma, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None:
            raise ValueError("the forecast prior needs cond=: the forecast member(s) (B, *state) it is conditioned on")
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x has state shape {tuple(x.shape[1:])}, the forecast prior expects {self.event_shape}")
        if tuple(cond.shape) != tuple(x.shape):
            raise ValueError(f"cond (the forecast) has shape {tuple(cond.shape)}, expected {tuple(x.shape)}: "
                             f"one forecast member of state shape {self.event_shape} per sample")
        dtype = next(self.denoiser.parameters()).dtype
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        cond = cond.to(x.dtype)
        r = ((x - cond) / self.scale).reshape(x.shape[0], *self.layout).to(dtype)
        zf = ((cond - self.mean.to(x)) / self.std.to(x)).reshape(x.shape[0], *self.layout).to(dtype)
        d = self.denoiser(r, (sigma / self.scale).to(dtype), cond=zf).to(x.dtype)
        return cond + self.scale * d.reshape(x.shape)


@dataclass
class ForecastPrior:
    """A trained prior ``x | forecast``: ``denoiser`` of the normalised forecast error in the net layout,
    the state's ``state_shape``, the forecast normalisation (``mean``, ``std`` of ``state_shape``), the
    error ``scale`` ``s``, the net ``layout``, the forecast ``interval`` and training ``perturbation``
    (None for given pairs) and the training ``history``."""

    denoiser: nn.Module
    state_shape: tuple[int, ...]
    mean: torch.Tensor
    std: torch.Tensor
    scale: float
    layout: tuple[int, ...]
    interval: float | None = None
    perturbation: float | None = None
    history: list = field(default_factory=list)

    def conditional(self) -> ForecastDenoiser:
        """The denoiser of the state given a forecast member, ``(x, sigma, cond=x_f)``."""
        return ForecastDenoiser(self.denoiser, self.state_shape, self.layout, self.mean, self.std, self.scale)

    def save(self, path: str | os.PathLike) -> Path:
        """Write a checkpoint directory (safetensors weights + JSON config), atomically."""
        from sciffusion.checkpoint import save_checkpoint

        config = {"model": {"net": net_spec(self.denoiser.net), "sigma_data": self.denoiser.sigma_data},
                  "forecast_prior": {"state_shape": list(self.state_shape), "layout": list(self.layout),
                                     "mean": self.mean.tolist(), "std": self.std.tolist(), "scale": self.scale,
                                     "interval": self.interval, "perturbation": self.perturbation}}
        return save_checkpoint(path, weights=self.denoiser.state_dict(), config=config)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device=None) -> ForecastPrior:
        """Load a checkpoint written by :meth:`save` (never unpickles); others are refused."""
        from sciffusion.checkpoint import denoiser_from, load_task

        ckpt = load_task(path, "forecast_prior", "a forecast prior")
        c = ckpt["config"]["forecast_prior"]
        return cls(denoiser_from(ckpt, ema=False, device=device), tuple(c["state_shape"]),
                   torch.tensor(c["mean"], dtype=torch.float64), torch.tensor(c["std"], dtype=torch.float64),
                   float(c["scale"]), tuple(c["layout"]), c["interval"], c["perturbation"])


def forecast_pairs(model: System, *, perturbation: float, interval: float | None = None, n_trajectories: int = 16,
                   length: int = 500, spinup: float | None = None, draws: int = 1,
                   forecast: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Training pairs ``(target, cond, interval)``: ``target`` the truth ``x_t`` and ``cond`` the forecast
    ``M(x_{t-1} + e)``, ``e ~ N(0, perturbation^2)``, ``draws`` forecasts per truth state, both
    ``(n_trajectories * (length - 1) * draws, *state)``. ``forecast`` (default ``model.step`` over the
    interval) is the forecast model the filter will use, e.g. an imperfect one or an emulator."""
    eps = check_positive(perturbation, "perturbation")
    traj, interval, _ = _from_system(model, n_trajectories, length, interval, spinup, seed)
    every = steps_in(interval, model.dt, "interval", step="model step")
    if isinstance(draws, bool) or int(draws) != draws or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    prev = traj[:, :-1].reshape(-1, *traj.shape[2:]).repeat_interleave(int(draws), 0)
    target = traj[:, 1:].reshape(-1, *traj.shape[2:]).repeat_interleave(int(draws), 0)
    g = member_generator(seed, 2**32 - 7)
    start = prev + eps * torch.randn(prev.shape, generator=g, dtype=prev.dtype).to(prev.device)
    cond = model.step(start, every, generator=g) if forecast is None else forecast(start)
    return target, cond, interval


def train_forecast_prior(data, *, perturbation: float | None = None, interval: float | None = None,
                         steps: int = 2000, net: dict | None = None, n_trajectories: int = 16, length: int = 500,
                         spinup: float | None = None, draws: int = 1,
                         forecast: Callable[[torch.Tensor], torch.Tensor] | None = None, seed: int = 0,
                         sigma_data: float = 1.0, out_dir=None, progress: bool = True, threads: int | None = None,
                         max_seconds: float | None = None, **trainer) -> ForecastPrior:
    """Train the prior ``p(x | x_f)`` of the module docstring with :class:`~sciffusion.training.Trainer`.

    Args:
        data: a :class:`~sciffusion.systems.base.System` (pairs by :func:`forecast_pairs` with
            ``perturbation``, ``interval``, ``n_trajectories``, ``length``, ``spinup``, ``draws``,
            ``forecast``, ``seed``) or a pair of tensors ``(target, cond)``, both ``(P, *state)``.
        perturbation: the std of the previous analysis' error (needed with a System), e.g. the analysis
            RMSE the filter is expected to reach.
        steps: optimiser steps (``Trainer.fit``); ``max_seconds`` stops earlier, ``threads`` sets torch's.
        net: backbone spec ``{"name", "kwargs"}``: ``PeriodicConv1d`` (default for 1-D and 2-D states:
            a periodic last axis), ``UNet2d`` (default for ``(C, H, W)``) or ``MLP`` (any state); the
            input and condition channel counts are filled in.
        seed: the pairs, the network initialisation and the Trainer's data order and noise.
        sigma_data, out_dir, progress, **trainer: the Denoiser's and the Trainer's (``batch_size``,
            ``lr``, ``ema_decay``...; their defaults when not given).
    """
    if isinstance(data, System):
        if perturbation is None:
            raise ValueError("perturbation (the std of the previous analysis' error) is needed to make "
                             "forecast pairs from a system")
        target, cond, interval = forecast_pairs(data, perturbation=perturbation, interval=interval,
                                                n_trajectories=n_trajectories, length=length, spinup=spinup,
                                                draws=draws, forecast=forecast, seed=seed)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        target, cond = (torch.as_tensor(t) for t in data)
        if target.shape != cond.shape or target.ndim < 2:
            raise ValueError(f"target and cond must both be (P, *state), got shapes {tuple(target.shape)} "
                             f"and {tuple(cond.shape)}")
    else:
        raise TypeError(f"data must be a sciffusion System or a pair (target, cond) of tensors, "
                        f"got {type(data).__name__}")
    target, cond = target.to(torch.float64), cond.to(torch.float64)
    if not bool(torch.isfinite(target).all() and torch.isfinite(cond).all()):
        raise ValueError("the training pairs hold NaN or infinite values (a diverged forecast?)")
    state = tuple(target.shape[1:])
    mean, std = cond.mean(0), cond.std(0).clamp_min(1e-12)
    scale = float((target - cond).pow(2).mean().sqrt())
    if scale == 0.0:
        raise ValueError("every forecast equals its target: there is no forecast error to learn")
    rank = len(state)
    name = (net or {}).get("name") or ("UNet2d" if rank == 3 else "PeriodicConv1d" if rank in (1, 2) else "MLP")
    layout = _layout(name, 1, state) if name in _NETS else ()
    nets = {n: (d, {k: layout[0], _COND_KEY[n]: layout[0]} if layout else {}) for n, (d, k, _) in _NETS.items()}
    spec = task_spec(net, name, nets, "a forecast prior", "PeriodicConv1d, UNet2d or MLP")
    with seeded(seed):
        denoiser = Denoiser(build_net(spec), sigma_data=sigma_data)
    r = ((target - cond) / scale).reshape(len(target), *layout).to(torch.float32).contiguous()
    zf = ((cond - mean) / std).reshape(len(cond), *layout).to(torch.float32).contiguous()
    config = {"forecast_prior": {"state_shape": list(state), "interval": interval, "perturbation": perturbation}}
    fit = Trainer(denoiser, TensorPairs(r, zf), out_dir=out_dir, seed=seed, progress=progress, config=config, **trainer)
    history = fit.fit(steps, threads=threads, max_seconds=max_seconds, desc="forecast prior")
    return ForecastPrior(fit.ema.eval(), state, mean, std, scale, layout, interval, perturbation, history)


class ForecastStart:
    """A sampler step that starts from the noised posterior's mean: at the first level ``S`` of the
    schedule the starting noise ``x = S z`` becomes ``S z + D(x_f + S z, S)``, with ``D`` the guided
    denoiser the sampler runs and ``x_f = cond``. Wraps any step of :mod:`sciffusion.diffusion.sample`
    (same options), as :class:`~sciffusion.emulators.ensemble.TemperedStep` does."""

    def __init__(self, step):
        self.step = step_function(step)
        inner = step_keywords(self.step)
        self.sampler_keywords = None if inner is None else (*inner, *(("sigmas",) if "sigmas" not in inner else ()))
        self.__name__ = step_name(step)

    def __call__(self, denoiser, x, sigma, sigma_next, *, sigmas: torch.Tensor, cond: dict, **kwargs):
        if float(sigma) == float(sigmas[0]):
            x = x + denoiser(cond["cond"] + x, torch.as_tensor(sigma).expand(x.shape[0]), **cond)
        return forward_step(self.step, denoiser, x, sigma, sigma_next, sigmas=sigmas, cond=cond, **kwargs)


def check_prior(prior, ensemble: torch.Tensor, domains=None):
    """The conditional denoiser of ``prior`` (a :class:`ForecastPrior` or any ``(x, sigma, cond=x_f)``
    denoiser of the state); ValueError if its state shape is not the ensemble's ``(N, *state)``,
    TypeError if ``domains`` (a localised analysis) is given too."""
    if domains is not None:
        raise TypeError("prior= (a trained forecast prior) analyses the whole state; it takes no domains=")
    den = prior.conditional() if isinstance(prior, ForecastPrior) else prior
    if not callable(den):
        raise TypeError(f"prior must be a ForecastPrior or a conditional denoiser, got {type(prior).__name__}")
    event = getattr(den, "event_shape", None)
    if ensemble.ndim < 2:
        raise ValueError(f"ensemble must be (N, *state), got shape {tuple(ensemble.shape)}")
    if event is not None and tuple(event) != tuple(ensemble.shape[1:]):
        raise ValueError(f"the forecast ensemble has state shape {tuple(ensemble.shape[1:])} but the forecast "
                         f"prior (cond) expects {tuple(event)}")
    return den


def forecast_prior_analysis(prior, ensemble: torch.Tensor, operator, y: torch.Tensor, *, noise_std,
                            guidance: str = "mmps", sampler: str | None = "heun", steps: int = 16,
                            sigma_max: float = 10.0, sigma_min: float = 0.002, condition: str = "member",
                            generator: torch.Generator | None = None, **options) -> torch.Tensor:
    r"""Analysis ensemble ``(N, *state)``: member ``i`` is one draw of ``p(x | x_f^i, y)``.

    Every member is sampled with the prior conditioned on its own forecast (``cond = ensemble``,
    one :func:`sciffusion.inverse.sample` call for all; ``condition="mean"``: on the ensemble mean). The draw starts at the top noise level
    ``S = sigma_max * s`` from :math:`S z + D_y(x^f + S z, S; x^f)` (:class:`ForecastStart`: the
    noised posterior centred on its mean, with the guided denoiser :math:`D_y`). A start from
    zero-mean noise, or one centred on the prior's mean, shifts each draw by about the offset times
    sd / S (measured with the exact Gaussian prior: 5% of the posterior sd at ``sigma_max = 10`` for
    a prior-to-posterior offset of about one sd; the centred start leaves no measurable shift).

    Args:
        prior: a :class:`ForecastPrior`, or any conditional denoiser ``(x, sigma, cond=x_f)`` of the
            state (an exact one in a test), optionally with ``scale`` (the unit of the noise levels,
            default 1) and ``event_shape``.
        ensemble: forecast members ``(N, *state)``.
        operator, y, noise_std: as :func:`~sciffusion.assimilate.analysis` (NaN in ``y``: missing;
            all NaN returns the forecast unchanged).
        guidance, sampler, steps, generator, **options: :func:`sciffusion.inverse.sample`'s
            (``cg_iters`` for ``"mmps"``...); Heun's ODE sampler by default, as in ``analysis``.
        sigma_max, sigma_min: the noise levels (``karras_sigmas``) in units of the prior's ``scale``
            (the RMS forecast error of the training pairs).
        condition: ``"member"`` (member ``i`` given its own forecast) or ``"mean"`` (every member a draw
            of ``p(x | mean forecast, y)``: the prior then stands for the error of the ensemble mean).
    """
    den = check_prior(prior, ensemble)
    std = torch.as_tensor(noise_std, dtype=torch.float64)
    if not bool(torch.isfinite(std).all()) or bool((std < 0).any()):
        raise ValueError(f"noise_std must be finite and non-negative, got min {float(std.min()):g}")
    if condition not in ("member", "mean"):
        raise ValueError(f"condition must be 'member' or 'mean', got {condition!r}")
    y = torch.as_tensor(y, dtype=torch.float64)
    if bool(torch.isnan(y).all()):
        return ensemble.clone()
    n, state = ensemble.shape[0], tuple(ensemble.shape[1:])
    s = float(getattr(den, "scale", 1.0))
    sigmas = karras_sigmas(steps, sigma_min * s, sigma_max * s).to(torch.float64)
    cond = ensemble.to(torch.float64)
    if condition == "mean":
        cond = cond.mean(0, keepdim=True).expand_as(cond).contiguous()
    if guidance != "smc":  # SMC runs its own kernel and takes no sampler
        sampler = ForecastStart(DEFAULT_SAMPLER if sampler is None else sampler)
    out = posterior_sample(den, operator, y, noise_std=std, guidance=guidance, sampler=sampler, n_members=n,
                           sigmas=sigmas, generator=generator, event_shape=state, dtype=torch.float64,
                           device=ensemble.device, cond=cond, **options)
    return out.to(ensemble.dtype)
