"""A diffusion prior over short trajectory windows, trained with :class:`~sciffusion.training.Trainer`.

A window is ``2k + 1`` consecutive states ``(W, *state)`` of a system, ``dt`` apart. The prior is
an EDM :class:`~sciffusion.diffusion.Denoiser` trained on every window (stride 1) of a set of
trajectories, in normalised coordinates ``z = (x - mean) / std`` (``mean`` and ``std`` per state
entry, over all trajectories and times). The network sees a window in its own layout: the window
axis is folded into the channels (``(W * C, *grid)``), as SDA does (Rozet & Louppe 2023), so a
periodic 1-D state ``(K,)`` is a ``PeriodicConv1d`` input ``(W, K)``; :class:`WindowDenoiser`
turns it back into a denoiser over ``(W, *state)``. :mod:`sciffusion.assimilate.smoother`
composes it into a prior over whole trajectories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr
from torch import nn

from sciffusion.diffusion import Denoiser
from sciffusion.nets import build_net, task_spec
from sciffusion.systems.base import System, check_positive_int, member_generator, steps_in
from sciffusion.training import TensorPairs, Trainer, seeded

# backbone defaults (those of the rollout emulator), channel keys filled in from the window layout
_NETS = {"PeriodicConv1d": ({"width": 32, "n_blocks": 4}, "in_channels", 1),
         "UNet2d": ({"channels": [16, 32], "blocks_per_level": 1, "padding": "circular", "attention_levels": []},
                    "in_channels", 2),
         "MLP": ({"width": 256, "depth": 3}, "in_features", None)}


class WindowDenoiser(nn.Module):
    """``denoiser`` (over the net layout ``(B, *layout)``) as a denoiser over windows ``(B, W, *state)``.

    The EDM preconditioning is elementwise, so folding the window axis into the channels outside
    the denoiser changes nothing but the shapes."""

    def __init__(self, denoiser: nn.Module, window: int, state_shape: tuple[int, ...], layout: tuple[int, ...]):
        super().__init__()
        self.denoiser, self.window = denoiser, int(window)
        self.event_shape = (self.window, *state_shape)
        self.layout = tuple(layout)
        self.sigma_data = getattr(denoiser, "sigma_data", None)

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x has event shape {tuple(x.shape[1:])}, the window prior expects {self.event_shape}")
        return self.denoiser(x.reshape(x.shape[0], *self.layout), sigma, **cond).reshape(x.shape)


@dataclass
class WindowPrior:
    """A trained window prior: ``denoiser`` over the net layout, ``window`` states ``dt`` apart, the
    normalisation (``mean``, ``std`` of ``state_shape``), the state's ``dims``, ``coords`` and ``attrs``
    for xarray output, and the training ``history``."""

    denoiser: nn.Module
    window: int
    state_shape: tuple[int, ...]
    mean: torch.Tensor
    std: torch.Tensor
    layout: tuple[int, ...]
    dt: float | None = None
    dims: tuple[str, ...] = ()
    coords: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    history: list = field(default_factory=list)

    def window_denoiser(self) -> WindowDenoiser:
        """The denoiser over normalised windows ``(B, W, *state)``."""
        return WindowDenoiser(self.denoiser, self.window, self.state_shape, self.layout)


def _layout(name: str, window: int, state: tuple[int, ...]) -> tuple[int, ...]:
    """The net input shape of one window: flat for an MLP, else the window folded into the channels."""
    grid = _NETS[name][2]
    if grid is None:
        return (window * math.prod(state),)
    if len(state) < grid:
        raise ValueError(f"net {name!r} needs a state with at least {grid} grid dims, the state has shape {state}")
    lead = state[: len(state) - grid]
    return (window * math.prod(lead), *state[len(state) - grid:])


def _from_system(model: System, n_trajectories: int, length: int, interval: float | None, spinup: float | None,
                 seed: int) -> tuple[torch.Tensor, float, dict]:
    interval = model.dt if interval is None else interval
    spinup = model.default_intervals.get("spinup", 0.0) if spinup is None else spinup
    every = steps_in(interval, model.dt, "interval", step="model step")
    spin = steps_in(spinup, model.dt, "spinup", step="model step")
    g = member_generator(seed, 2**32 - 5)
    x = model.advance(model.initial_state(check_positive_int(n_trajectories, "n_trajectories"), g), spin, generator=g)
    traj = model.integrate(x, check_positive_int(length, "length") - 1, every, generator=g)
    names = list(model.variables())
    info = {}
    if len(names) == 1 and tuple(model.fields(traj[:1, 0])[names[0]].shape[1:]) == tuple(traj.shape[2:]):
        var = model.variables()[names[0]]
        info = {"dims": tuple(var.dims), "coords": {d: c.values for d, c in model.coords().items() if d in var.dims},
                "attrs": {"name": names[0], **var.attrs}}
    return traj, float(interval), info


def _from_xarray(data: xr.DataArray, time_dim: str) -> tuple[torch.Tensor, float, dict]:
    if time_dim not in data.dims:
        raise ValueError(f"trajectories need a {time_dim!r} dim, got dims {data.dims}")
    dims = list(data.dims)
    state_dims = dims[dims.index(time_dim) + 1:]
    sample_dims = [d for d in dims if d != time_dim and d not in state_dims]
    arr = data.transpose(*sample_dims, time_dim, *state_dims).values
    arr = arr.reshape(-1, *arr.shape[len(sample_dims):])
    t = np.asarray(data[time_dim].values, dtype=np.float64) if time_dim in data.coords else None
    dt = None
    if t is not None and len(t) > 1:
        step = np.diff(t)
        if not np.allclose(step, step[0], rtol=1e-6) or step[0] <= 0:
            raise ValueError(f"the trajectories' {time_dim!r} coordinate is not increasing with one step")
        dt = float(step[0])
    info = {"dims": tuple(map(str, state_dims)),
            "coords": {d: np.asarray(data[d].values) for d in state_dims if d in data.coords},
            "attrs": {"name": data.name, **data.attrs}}
    return torch.as_tensor(arr), dt, info


def train_window_prior(data, *, window: int = 5, steps: int = 2000, net: dict | None = None,
                       n_trajectories: int = 16, length: int = 500, interval: float | None = None,
                       spinup: float | None = None, time_dim: str = "time", dt: float | None = None, seed: int = 0,
                       sigma_data: float = 1.0, out_dir=None, progress: bool = True, threads: int | None = None,
                       max_seconds: float | None = None, **trainer) -> WindowPrior:
    """Train a diffusion prior on every window of ``window`` consecutive states of some trajectories.

    Args:
        data: a :class:`~sciffusion.systems.base.System` (``n_trajectories`` runs of ``length`` states
            ``interval`` apart after ``spinup``, seeded by ``seed``), a tensor ``(N, T, *state)``, or a
            DataArray with a ``time_dim`` (the dims after it are the state's, the others samples).
        window: states per window, odd (``2k + 1``; SDA's Markov blanket of order ``k``).
        steps: optimiser steps (``Trainer.fit``); ``max_seconds`` stops earlier, ``threads`` sets torch's.
        net: backbone spec ``{"name", "kwargs"}``: ``PeriodicConv1d`` (default for 1-D and 2-D states:
            a periodic last axis), ``UNet2d`` (default for 3-D states ``(C, H, W)``) or ``MLP`` (any state);
            the input channel count is filled in from the window.
        dt: the time between states of a tensor ``data`` (a DataArray's comes from its time coordinate).
        seed: the trajectories, the network initialisation and the Trainer's data order and noise.
        sigma_data, out_dir, progress, **trainer: the Denoiser's and the Trainer's (``batch_size``,
            ``lr``, ``ema_decay``...; their defaults when not given).
    """
    if isinstance(window, bool) or int(window) != window or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd positive number of states (2k + 1), got {window!r}")
    info: dict = {}
    if isinstance(data, System):
        traj, dt, info = _from_system(data, n_trajectories, length, interval, spinup, seed)
    elif isinstance(data, xr.DataArray):
        traj, dt_x, info = _from_xarray(data, time_dim)
        dt = dt_x if dt is None else dt
    elif torch.is_tensor(data) or isinstance(data, np.ndarray):
        traj = torch.as_tensor(data)
        if traj.ndim < 3:
            raise ValueError(f"trajectories must be (N, T, *state), got shape {tuple(traj.shape)}")
    else:
        raise TypeError(f"data must be a sciffusion System, a tensor (N, T, *state) or a DataArray, "
                        f"got {type(data).__name__}")
    traj = traj.to(torch.float64)
    if traj.shape[1] < window:
        raise ValueError(f"trajectories of {traj.shape[1]} states are shorter than the window of {window}")
    if not bool(torch.isfinite(traj).all()):
        raise ValueError("the trajectories hold NaN or infinite values")
    state = tuple(traj.shape[2:])
    mean = traj.mean((0, 1))
    std = traj.std((0, 1)).clamp_min(1e-12)
    z = ((traj - mean) / std).to(torch.float32)
    windows = z.unfold(1, window, 1).movedim(-1, 2).reshape(-1, window, *state)
    rank = len(state)
    default = "UNet2d" if rank == 3 else ("PeriodicConv1d" if rank in (1, 2) else "MLP")
    name = (net or {}).get("name") or default
    layout = _layout(name, window, state) if name in _NETS else ()
    nets = {n: (d, {k: layout[0]} if layout else {}) for n, (d, k, _) in _NETS.items()}
    spec = task_spec(net, default, nets, "a window prior", "PeriodicConv1d, UNet2d or MLP")
    with seeded(seed):
        denoiser = Denoiser(build_net(spec), sigma_data=sigma_data)
    data_set = TensorPairs(windows.reshape(len(windows), *layout).contiguous())
    config = {"window_prior": {"window": window, "state_shape": list(state), "dt": dt}}
    fit = Trainer(denoiser, data_set, out_dir=out_dir, seed=seed, progress=progress, config=config, **trainer)
    history = fit.fit(steps, threads=threads, max_seconds=max_seconds, desc="window prior")
    ema = fit.ema.eval()
    return WindowPrior(ema, window, state, mean, std, layout, dt, info.get("dims", ()), info.get("coords", {}),
                       info.get("attrs", {}), history)
