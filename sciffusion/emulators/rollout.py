"""Autoregressive climate rollouts: a conditional EDM model of x(t + dt) given x(t), rolled out for whole ensembles.

The model learns ``p(x(t+dt) | x(t-h+1..t), f(t))`` for ``history`` states ``h`` and optional
forcing fields ``f`` (sea-surface temperature, insolation...). Its target is the **normalised
increment**

.. math::
    z = \\frac{x(t+dt) - x(t) - \\mu_\\Delta}{\\sigma_\\Delta}

(per-variable mean and std of the one-step increment in the training data), the common stable
choice: the network only has to model the change, the persistence part is exact, and the
increments have unit variance as the EDM preconditioning assumes. Conditions are the normalised
states (and forcings), concatenated as channels. A rollout samples ``z`` for all members in one
batch with any sampler of :func:`sciffusion.diffusion.sample`, adds it to the state, and repeats
(:meth:`~sciffusion.emulators.rollout_base.RolloutModel.rollout`): member ``m`` at step ``k``
draws from the noise stream ``(seed, k, m)``, so ensembles are reproducible, member ``m`` does
not depend on the ensemble size and a resumed run equals an uninterrupted one bit for bit.

See ``docs/rollout.md``; the DYffusion variant on the same API is :class:`~sciffusion.emulators.DYffusion`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import xarray as xr

from sciffusion.diffusion import Denoiser, sample
from sciffusion.diffusion.schedules import SIGMA_MAX
from sciffusion.emulators.calibrate import check_temperature
from sciffusion.emulators.rollout_base import RolloutCoder, RolloutModel, _names

# Heun 8 (15 calls per step of a long rollout): speed first; it inflates a narrow conditional spread
# (1.8x for tau = 0.7) - see docs/rollout.md for dpmpp2m / start="centred" / a lower sigma_max
DEFAULT_SAMPLER = {"method": "heun", "steps": 8, "sigma_min": 0.002, "sigma_max": SIGMA_MAX}


def default_net(coder: RolloutCoder, net: dict | None, *, out_channels: int | None = None,
                cond_channels: int | None = None) -> dict:
    """A backbone spec with the channel counts (and grid size for SFNO) filled in.

    Default: ``PeriodicConv1d`` on 1-D grids, ``UNet2d`` with circular padding on 2-D grids;
    ``{"name": "SFNO"}`` for lat-lon grids on the sphere.
    """
    from sciffusion.nets import task_spec

    rank = len(coder.grid_shape)
    io = {"in_channels": coder.channels, "cond_channels": coder.cond_channels if cond_channels is None else cond_channels}
    if out_channels is not None:
        io["out_channels"] = out_channels
    nets = {"PeriodicConv1d": ({"width": 32, "n_blocks": 4}, io),
            "UNet2d": ({"channels": [16, 32], "blocks_per_level": 1, "padding": "circular", "attention_levels": []}, io),
            "SFNO": ({"width": 32, "n_layers": 4}, {**io, **dict(zip(("nlat", "nlon"), coder.grid_shape))})}
    return task_spec(net, {1: "PeriodicConv1d", 2: "UNet2d"}.get(rank), nets, f"a rollout on a {rank}-D grid",
                     "PeriodicConv1d (1-D grids), UNet2d (2-D) or SFNO (lat-lon)")


def fit_coder(ds: xr.Dataset | xr.DataArray, variables, grid_dims, time_dim: str, sample_dims, history: int, forcings):
    """:meth:`RolloutCoder.fit` on trajectories ``ds`` with the defaults of :meth:`Rollout.fit`: the variables
    (those with ``time_dim`` that are not forcings), grid dims (after ``time_dim``) and sample dims (the others)."""
    ds = ds.to_dataset() if isinstance(ds, xr.DataArray) else ds
    forcings = _names(forcings)
    variables = _names(variables) or [str(v) for v in ds.data_vars if time_dim in ds[v].dims and str(v) not in forcings]
    if not variables:
        raise ValueError(f"no variable of the training data has a {time_dim!r} dimension")
    dims = [str(d) for d in ds[variables[0]].dims]
    if time_dim not in dims:
        raise ValueError(f"variable {variables[0]!r} has no {time_dim!r} dimension (dims {tuple(dims)}); pass time_dim=")
    grid_dims = _names(grid_dims) or dims[dims.index(time_dim) + 1 :]
    sample_dims = [d for d in dims if d not in (time_dim, *grid_dims)] if sample_dims is None else _names(sample_dims)
    return RolloutCoder.fit(ds, variables, grid_dims, time_dim, sample_dims, history, forcings)


def training_pairs(coder: RolloutCoder, x, f) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets ``z (N, C, *grid)`` (normalised increments) and conditions ``(N, Cc, *grid)`` from
    states ``x (S, T, C, *grid)`` and forcings ``f (S, T, F, *grid)``."""
    h = coder.history
    xs = torch.as_tensor(x)
    hist = torch.stack([xs[:, t - h + 1 : t + 1] for t in range(h - 1, xs.shape[1] - 1)], 1)  # (S, P, h, C, *g)
    target = coder.encode_increment(xs[:, h:] - xs[:, h - 1 : -1])
    forcing = None if f is None else torch.as_tensor(f)[:, h - 1 : -1].flatten(0, 1)
    cond = coder.condition(hist.flatten(0, 1), forcing)
    return target.flatten(0, 1).float(), cond.float()


class Rollout(RolloutModel):
    """Autoregressive EDM emulator (see the module docstring).

    Build with :meth:`fit` or :meth:`load`, or directly from any denoiser
    ``denoiser(z, sigma, cond=...) -> E[z0 | z]`` of the normalised increment (e.g. an exact one
    for a test) and a :class:`~sciffusion.emulators.rollout_base.RolloutCoder`. ``sampler`` holds the
    default settings of :func:`~sciffusion.diffusion.sample` (``method``, ``steps``, ``sigma_max``...) and
    optionally ``temperature``, which scales each step's starting draw (as the EnsembleEmulator's knob;
    above 1 widens the ensemble, e.g. a distilled student's).
    """

    key, label, emulator, coder_class = "rollout", "a rollout model", "sciffusion.emulators.Rollout", RolloutCoder

    def __init__(self, denoiser, coder: RolloutCoder, *, sampler: dict | None = None):
        self.denoiser, self.coder = denoiser, coder
        self.sampler = {**DEFAULT_SAMPLER, **(sampler or {})}
        if "temperature" in self.sampler:
            check_temperature(self.sampler["temperature"], "sampler['temperature']")

    @classmethod
    def fit(cls, ds: xr.Dataset, variables=None, *, grid_dims=None, time_dim: str = "time", sample_dims=None,
            history: int = 1, forcings=None, net: dict | None = None, steps: int = 2000, batch_size: int = 64,
            lr: float = 2e-3, warmup_steps: int = 100, ema_decay: float = 0.995, seed: int = 0,
            out_dir: str | os.PathLike | None = None, device=None, progress: bool = True,
            max_seconds: float | None = None, checkpoint_every: int | None = None,
            threads: int | None = None) -> Rollout:
        """Train on trajectories ``ds`` with variables on ``(*sample_dims, time, *grid)``.

        Args:
            variables: state variables (default: every variable with ``time_dim`` that is not a forcing).
            grid_dims: spatial dims (default: the dims after ``time_dim``).
            sample_dims: independent trajectories (default: every other dim, e.g. ``init_time``).
            history: number of states conditioned on (``x(t-history+1..t)``).
            forcings: names of forcing variables of ``ds`` (on ``time`` and any of the grid dims),
                conditioned on at the time of the current state.
            net: backbone spec ``{"name", "kwargs"}`` (channel counts filled in; see :func:`default_net`).
            steps, batch_size, lr, warmup_steps, ema_decay, seed: training (:class:`~sciffusion.training.Trainer`).
            out_dir: checkpoint directory of a resumable training run (None: in memory).
            max_seconds: wall-time budget: training stops after the step that exceeds it (before
                ``steps``); ``model.history`` says how many steps ran.
            checkpoint_every: steps between checkpoints of a run with ``out_dir`` (default 10% of
                ``steps``, at most 500); a killed run resumes from the last one, bit for bit.
            threads: torch CPU threads while training (default: leave torch's setting).
        """
        from sciffusion.nets import build_net
        from sciffusion.training import TensorPairs, seeded

        coder, x, f = fit_coder(ds, variables, grid_dims, time_dim, sample_dims, history, forcings)
        target, cond = training_pairs(coder, x, f)
        with seeded(seed):  # the caller's global RNG is left as it was
            den = Denoiser(build_net(default_net(coder, net)), sigma_data=1.0)
            return cls(den, coder)._train_denoiser(TensorPairs(target, cond), steps, batch_size=batch_size,
                                                   max_seconds=max_seconds, threads=threads, out_dir=out_dir, lr=lr,
                                                   warmup_steps=warmup_steps, ema_decay=ema_decay, seed=seed,
                                                   checkpoint_every=checkpoint_every, device=device, progress=progress)

    # ------------------------------------------------------------------ one step
    def _advance(self, hist: torch.Tensor, k: int, forcing: torch.Tensor | None, gens, settings: dict[str, Any]):
        """One autoregressive step: ``x(t+dt) = x(t) + decode(z)``, ``z ~ p(z | cond)``."""
        cond = self.coder.condition(hist, forcing)
        opts = dict(settings)
        z = sample(self.denoiser, (hist.shape[0], *hist.shape[2:]), steps=int(opts.pop("steps")), method=opts.pop("method"),
                   generator=gens, dtype=hist.dtype, device=hist.device, cond=cond, **opts)
        return [hist[:, -1] + self.coder.decode_increment(z)]
