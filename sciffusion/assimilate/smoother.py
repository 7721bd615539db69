r"""Score-based smoothing over trajectory windows (SDA: Rozet & Louppe 2023, "Score-based data assimilation").

A diffusion prior trained on short windows of ``W = 2k + 1`` states (:mod:`~sciffusion.assimilate.window_prior`)
scores a whole trajectory ``x_{1:L}`` by SDA's Markov-blanket composition: the ``L - W + 1``
overlapping windows (stride 1) are denoised as one batch, state ``i`` takes its estimate from the
window centred on it, and the first (last) ``k`` states from the first (last) window:

.. math::
    D(x_{1:L}, \sigma)_i = \begin{cases} D_W(x_{1:W}, \sigma)_i & i \le k \\
    D_W(x_{i-k:i+k}, \sigma)_{k+1} & k < i \le L - k \\
    D_W(x_{L-W+1:L}, \sigma)_{i-L+W} & i > L - k. \end{cases}

(Scores and denoisers differ by :math:`(D - x)/\sigma^2`, state by state, so composing either is
the same.) For an order-``k`` Markov chain the composition is exact at :math:`\sigma = 0`;
noised trajectories are not Markov, so at larger :math:`\sigma` it is an approximation that
improves with ``k`` (measured on a linear-Gaussian chain in ``tests/test_assimilate_smoother.py``).
:class:`TrajectoryDenoiser` is an ordinary denoiser over ``(L, *state)``, so
:func:`sciffusion.inverse.sample` samples the trajectory posterior with any of its guidance methods,
operators, missing observations and per-entry noise; windows are chained over a trajectory of any length.
:func:`smooth` does it on xarray.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from torch import nn

from sciffusion.assimilate.cycle import check_inputs
from sciffusion.assimilate.window_prior import WindowPrior
from sciffusion.diffusion import member_generators
from sciffusion.diffusion.denoiser import as_sigma
from sciffusion.inverse import as_operator
from sciffusion.inverse import sample as posterior_sample
from sciffusion.inverse.operators import Operator, module_device


class TrajectoryDenoiser(nn.Module):
    """SDA's composition of a window denoiser into a denoiser over trajectories (module docstring).

    Args:
        window_denoiser: ``denoiser(x, sigma) -> E[x0 | x]`` over windows ``(B, W, *state)``.
        window: ``W``, odd.
        length: ``L >= W`` states of the trajectory.
        state_shape: one state's shape (default: ``window_denoiser.event_shape[1:]``).
        max_windows: evaluate the ``B (L - W + 1)`` windows in batches of at most this many (memory).

    Call as ``denoiser(x, sigma)`` with ``x: (B, L, *state)``; with ``L == W`` it is ``window_denoiser``.
    """

    def __init__(self, window_denoiser, window: int, length: int, state_shape=None, max_windows: int | None = None):
        super().__init__()
        if isinstance(window, bool) or int(window) != window or window < 1 or window % 2 == 0:
            raise ValueError(f"window must be an odd positive number of states (2k + 1), got {window!r}")
        if int(length) < window:
            raise ValueError(f"the trajectory has {length} states, fewer than the window of {window}")
        if state_shape is None:
            event = getattr(window_denoiser, "event_shape", None)
            if event is None:
                raise ValueError("state_shape is needed: the window denoiser has no event_shape")
            state_shape = tuple(event)[1:]
        self.denoiser = window_denoiser
        self.window, self.length, self.k = int(window), int(length), int(window) // 2
        self.state_shape = tuple(int(s) for s in state_shape)
        self.event_shape = (self.length, *self.state_shape)
        self.max_windows = max_windows
        sigma_data = getattr(window_denoiser, "sigma_data", None)
        if sigma_data is not None:
            self.sigma_data = float(sigma_data)

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x has event shape {tuple(x.shape[1:])}, "
                             f"the trajectory denoiser expects {self.event_shape}")
        b, w, k = x.shape[0], self.window, self.k
        sigma = as_sigma(sigma, x)
        n = self.length - w + 1
        windows = x.unfold(1, w, 1).movedim(-1, 2).reshape(b * n, w, *self.state_shape)
        sig = sigma.repeat_interleave(n)
        size = len(windows) if self.max_windows is None else max(1, int(self.max_windows))
        d = torch.cat([self.denoiser(windows[i:i + size], sig[i:i + size], **cond)
                       for i in range(0, len(windows), size)]).reshape(b, n, w, *self.state_shape)
        return torch.cat([d[:, 0, :k], d[:, :, k], d[:, -1, k + 1:]], dim=1)


class TrajectoryOperator(Operator):
    """A per-state observation ``operator`` applied at the states ``index`` of a trajectory, in the
    normalised coordinates ``z`` of ``x = offset + scale * z``: ``(B, L, *state) -> (B, T, *obs)``.

    A linear ``operator`` stays linear (the offset's image is left out: subtract ``offset_image``
    from the observations); a nonlinear one sees ``offset + scale * z``."""

    def __init__(self, operator, index, length: int, state_shape, offset=None, scale=None):
        super().__init__()
        self.op = as_operator(operator)
        self.linear = bool(self.op.linear)
        self.state_shape, self.length = tuple(state_shape), int(length)
        self.event_shape = (self.length, *self.state_shape)
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long), persistent=False)
        zeros = torch.zeros(self.state_shape, dtype=torch.float64)
        self.register_buffer("offset", zeros if offset is None else torch.as_tensor(offset), persistent=False)
        self.register_buffer("scale", zeros + 1 if scale is None else torch.as_tensor(scale), persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, t = z.shape[0], len(self.index)
        x = z[:, self.index] * self.scale.to(z.dtype)
        if not self.linear:
            x = x + self.offset.to(z.dtype)
        out = self.op(x.reshape(b * t, *self.state_shape))
        return out.reshape(b, t, *out.shape[1:])

    def offset_image(self) -> torch.Tensor:
        """``A(offset)`` of a linear operator (0 for a nonlinear one), one state's observation shape."""
        if not self.linear:
            return torch.zeros(())
        with torch.no_grad():
            return self.op(self.offset[None].to(torch.float64))[0]


def _grid(obs: xr.DataArray, times, dt: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The trajectory's time grid and the index on it of each observation time (ValueError naming a
    time off the grid, or a grid whose step is not the prior's ``dt``)."""
    if "time" not in obs.dims or "time" not in obs.coords or obs["time"].dtype.kind not in "iuf":
        raise ValueError(f"observations need a numeric 'time' coordinate on a 'time' dim, got dims {obs.dims}")
    t_obs = np.asarray(obs["time"].values, dtype=np.float64)
    if times is None:
        if dt is None:
            raise ValueError("the window prior has no dt: pass times= (the trajectory's time grid)")
        n = int(np.floor((t_obs.max() - t_obs.min()) / dt + 1e-6)) + 1
        grid = t_obs.min() + dt * np.arange(n)
    else:
        grid = np.asarray(getattr(times, "values", times), dtype=np.float64).reshape(-1)
    step = np.diff(grid)
    if len(grid) > 1 and (step.min() <= 0 or not np.allclose(step, step[0], rtol=1e-6)):
        raise ValueError("times must be an increasing grid with one step")
    if len(grid) > 1 and dt is not None and not np.isclose(step[0], dt, rtol=1e-6):
        raise ValueError(f"times has step {step[0]:g}; the window prior's states are dt={dt:g} apart")
    h = step[0] if len(grid) > 1 else 1.0
    index = np.rint((t_obs - grid[0]) / h).astype(int)
    for i, (t, j) in enumerate(zip(t_obs, index)):
        if not (0 <= j < len(grid)) or abs(grid[j] - t) > 1e-6 * max(1.0, abs(h)):
            raise ValueError(f"observation time {t:g} (index {i}) is not on the trajectory's time grid "
                             f"({grid[0]:g} to {grid[-1]:g} every {h:g})")
    return grid, index


def smooth(prior: WindowPrior, observations: xr.DataArray, *, operator, noise_std, times=None, n_members: int = 8,
           seed: int = 0, guidance: str = "mmps", progress: bool = False, dtype: torch.dtype = torch.float32,
           max_windows: int | None = None, **options) -> xr.DataArray:
    """Posterior trajectories ``(time, member, *state dims)`` given observations spread over them.

    Args:
        prior: a :class:`~sciffusion.assimilate.WindowPrior` (e.g. from :func:`train_window_prior`).
        observations: DataArray on ``(time, *obs dims)``, NaN for missing; each time must lie on the
            trajectory's grid.
        operator: observation of one state, ``(B, *state) -> (B, *obs)`` (any :mod:`sciffusion.inverse`
            operator or differentiable callable), in the state's physical units.
        noise_std: observation noise std: a scalar, one per observation entry, or per ``(time, *obs)``.
        times: the trajectory's time grid (default: from the first to the last observation time,
            every ``prior.dt``); its step must be the prior's ``dt``.
        n_members, seed: the number of posterior draws; member ``m`` is seeded by ``(seed, m)`` (the
            same draw whatever ``n_members``).
        guidance, **options: :func:`sciffusion.inverse.sample`'s (``steps``, ``sampler``, ``cg_iters``,
            ``sigma_max``...; its defaults when not given). The noise levels are in units of the
            normalised state (the prior's ``std``).
        progress: a progress bar over the sampler's steps.
        max_windows: batch size of window evaluations (:class:`TrajectoryDenoiser`).

    Raises ValueError, before sampling, naming: an observation time off the grid, a grid shorter than the
    window, an operator whose output does not match the observations, a negative or ill-shaped noise std.
    """
    if not isinstance(observations, xr.DataArray):
        raise TypeError("observations must be an xarray DataArray on (time, *obs dims), "
                        f"got {type(observations).__name__}")
    obs = observations.transpose("time", ...) if "time" in observations.dims else observations
    grid, index = _grid(obs, times, prior.dt)
    if len(grid) < prior.window:
        raise ValueError(f"the trajectory has {len(grid)} states on its time grid, fewer than the prior's window "
                         f"of {prior.window}: pass a longer times=")
    state = tuple(prior.state_shape)
    y = torch.as_tensor(np.asarray(obs.values, dtype=np.float64))
    mean, std = prior.mean.to(torch.float64), prior.std.to(torch.float64)
    noise = check_inputs(mean.expand(2, *state), operator, y, noise_std)
    op = TrajectoryOperator(operator, index, len(grid), state, offset=mean, scale=std)
    y = y - op.offset_image()
    denoiser = TrajectoryDenoiser(prior.window_denoiser(), prior.window, len(grid), state, max_windows)
    device = module_device(denoiser)
    generator = (torch.Generator(device=device).manual_seed(int(seed)) if guidance == "smc"
                 else member_generators(int(seed), int(n_members), device=device))
    if progress:
        options["progress"] = True
    z = posterior_sample(denoiser, op, y, noise_std=noise, guidance=guidance, n_members=n_members,
                         generator=generator, event_shape=(len(grid), *state), dtype=dtype, **options)
    x = (mean + std * z.to(torch.float64).cpu()).movedim(0, 1).numpy()
    dims = tuple(prior.dims) or tuple(f"state_{i}" for i in range(len(state)))
    coords = {"time": ("time", grid, dict(obs["time"].attrs)), "member": np.arange(int(n_members)),
              **{d: (d, np.asarray(v)) for d, v in prior.coords.items() if d in dims}}
    attrs = {k: v for k, v in prior.attrs.items() if k != "name" and isinstance(v, (str, int, float))}
    attrs.update(smoother="sciffusion.assimilate.smooth (SDA window composition)", window=int(prior.window),
                 seed=int(seed), guidance=guidance,
                 **{f"option_{k}": v for k, v in options.items()
                    if k != "progress" and isinstance(v, (str, int, float))})
    return xr.DataArray(x, dims=("time", "member", *dims), coords=coords, name=prior.attrs.get("name") or "x",
                        attrs=attrs)
