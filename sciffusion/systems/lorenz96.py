"""Lorenz-96: one-level and two-level, batched over members in torch, RK4.

One level (Lorenz 1996), for k = 0..K-1 on a periodic ring::

    dx_k/dt = (x_{k+1} - x_{k-2}) x_{k-1} - x_k + F

Two levels (Lorenz 1996; Wilks 2005), J fast variables Y_{j,k} per slow X_k, the Y's on one
periodic ring of length K*J::

    dX_k/dt     = X_{k-1} (X_{k+1} - X_{k-2}) - X_k + F - (h c / b) sum_j Y_{j,k}
    dY_{j,k}/dt = -c b Y_{j+1,k} (Y_{j+2,k} - Y_{j-1,k}) - c Y_{j,k} + (h c / b) X_k

Defaults K=40, F=8, dt=0.05 (one model time unit = 5 days, so dt = 6 hours). The "forecast
model" (:func:`lorenz96_forecast_model`) has model error: a different forcing and an additive
stochastic forcing ``x <- x + noise_std * sqrt(dt) * N(0, I)`` after each RK4 step (the
``Lorenz96s`` convention of DAPPER).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from sciffusion.diffusion.sample import randn
from sciffusion.systems.base import Coordinate, System, Variable, check_positive, check_positive_int


def l96_tendency(x: torch.Tensor, forcing: float) -> torch.Tensor:
    """One-level tendency ``(x_{k+1} - x_{k-2}) x_{k-1} - x_k + F`` along the last axis."""
    return (torch.roll(x, -1, -1) - torch.roll(x, 2, -1)) * torch.roll(x, 1, -1) - x + forcing


def rk4_step(f, x: torch.Tensor, dt: float) -> torch.Tensor:
    """Classical 4th-order Runge-Kutta step of ``dx/dt = f(x)``."""
    k1 = f(x)
    k2 = f(x + 0.5 * dt * k1)
    k3 = f(x + 0.5 * dt * k2)
    k4 = f(x + dt * k3)
    return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


class Lorenz96(System):
    """Lorenz-96, state ``(B, K)`` (one level) or ``(B, K + K*J)`` (two levels, X then Y).

    Args:
        k: number of slow variables K (>= 4).
        forcing: F.
        dt: RK4 step in model time units; default 0.05 (6 hours) for one level, 0.005 for two
            levels (the fast variables are ``c = 10`` times faster).
        j: fast variables per slow one; 0 (default) gives the one-level model.
        h, b, c: two-level coupling, spatial and time-scale ratios (Wilks 2005: 1, 10, 10).
        noise_std: additive stochastic forcing amplitude (0 = deterministic).
    """

    name = "lorenz96"
    time_units = "model time units"
    time_note = "1 model time unit = 5 days; dt = 0.05 = 6 hours"
    default_intervals: ClassVar[dict[str, float]] = {"lead_interval": 0.05, "spinup": 10.0}
    default_perturbation = 0.1

    def __init__(
        self,
        k: int = 40,
        forcing: float = 8.0,
        dt: float | None = None,
        j: int = 0,
        h: float = 1.0,
        b: float = 10.0,
        c: float = 10.0,
        noise_std: float = 0.0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__(device, dtype)
        self.k = check_positive_int(k, "k")
        if self.k < 4:
            raise ValueError(f"k (number of Lorenz-96 variables) must be >= 4, got {k}")
        if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or j < 0:
            raise ValueError(f"j (fast variables per slow variable) must be an integer >= 0, got {j!r}")
        self.j = int(j)
        self.forcing = float(forcing)
        self.dt = check_positive((0.005 if self.j else 0.05) if dt is None else dt, "dt")
        self.h, self.b, self.c = float(h), check_positive(b, "b"), float(c)
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.noise_std = float(noise_std)

    @property
    def state_size(self) -> int:
        return self.k + self.k * self.j

    def params(self) -> dict[str, Any]:
        p = {"k": self.k, "forcing": self.forcing, "dt": self.dt, "noise_std": self.noise_std}
        if self.j:
            p.update(j=self.j, h=self.h, b=self.b, c=self.c)
        return p

    def tendency(self, x: torch.Tensor) -> torch.Tensor:
        """Right-hand side ``dx/dt`` for a state ``(B, state_size)``."""
        if not self.j:
            return l96_tendency(x, self.forcing)
        big, small = x[..., : self.k], x[..., self.k :]
        hcb = self.h * self.c / self.b
        coupling = small.reshape(*small.shape[:-1], self.k, self.j).sum(-1)
        dbig = l96_tendency(big, self.forcing) - hcb * coupling
        dsmall = (
            -self.c * self.b * torch.roll(small, -1, -1) * (torch.roll(small, -2, -1) - torch.roll(small, 1, -1))
            - self.c * small
            + hcb * torch.repeat_interleave(big, self.j, dim=-1)
        )
        return torch.cat([dbig, dsmall], dim=-1)

    def step(self, x: torch.Tensor, n_steps: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        for _ in range(int(n_steps)):
            x = rk4_step(self.tendency, x, self.dt)
            if self.noise_std:
                x = x + self.noise_std * self.dt**0.5 * self._noise(x, generator)
        return x

    @staticmethod
    def _noise(x: torch.Tensor, generator) -> torch.Tensor:
        """N(0, I) like ``x``, drawn on the CPU; ``generator`` may be one generator or a list, one per member
        (row), as :func:`sciffusion.diffusion.sample.randn` draws."""
        return randn(x.shape, generator, dtype=x.dtype).to(x.device)

    def initial_state(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``F`` plus small Gaussian noise (spin up before use: the attractor is reached in ~10 time units)."""
        x = self.forcing + 0.01 * torch.randn(n, self.state_size, generator=generator, dtype=self.dtype)
        if self.j:
            x[:, self.k :] = 0.1 * torch.randn(n, self.k * self.j, generator=generator, dtype=self.dtype)
        return x.to(self.device)

    def fields(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"x": x[..., : self.k]}
        if self.j:
            out["y"] = x[..., self.k :]
        return out

    def variables(self) -> dict[str, Variable]:
        out = {"x": Variable(("k",), {"long_name": "Lorenz-96 slow variable X_k", "units": "1"})}
        if self.j:
            out["y"] = Variable(("kj",), {"long_name": "Lorenz-96 fast variable Y_{j,k}", "units": "1"})
        return out

    def coords(self) -> dict[str, Coordinate]:
        out = {"k": Coordinate(np.arange(self.k), {"long_name": "site index on the periodic ring", "units": "1"})}
        if self.j:
            out["kj"] = Coordinate(np.arange(self.k * self.j), {"long_name": "fast-variable index (j + J k)", "units": "1"})
        return out


def lorenz96_forecast_model(
    forcing_error: float = 0.5, noise_std: float = 0.3, **kwargs: Any
) -> Lorenz96:
    """An imperfect forecast model of the one-level truth: ``F + forcing_error`` and stochastic forcing.

    Use it as ``simulate(..., forecast_system=lorenz96_forecast_model())`` to run ensembles with
    the wrong model against the truth of :class:`Lorenz96` (forecast-vs-truth experiments).
    """
    forcing = kwargs.pop("forcing", 8.0) + forcing_error
    return Lorenz96(forcing=forcing, noise_std=noise_std, **kwargs)


def leading_lyapunov_exponent(
    system: Lorenz96, x0: torch.Tensor, n_steps: int, renorm_every: int = 1, eps: float = 1e-8
) -> float:
    """Leading Lyapunov exponent (per time unit) by Benettin's two-trajectory method.

    A copy of each state in ``x0 (B, N)`` offset by ``eps`` is advanced alongside it and
    renormalised to distance ``eps`` every ``renorm_every`` steps; the exponent is the mean
    over members of ``sum log(d / eps) / (n_steps dt)``. Deterministic systems only.
    """
    g = torch.Generator().manual_seed(0)
    d0 = torch.randn(x0.shape, generator=g, dtype=x0.dtype).to(x0.device)
    y = x0 + eps * d0 / d0.norm(dim=-1, keepdim=True)
    x = x0
    total = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    n_blocks = n_steps // renorm_every
    for _ in range(n_blocks):
        x = system.step(x, renorm_every)
        y = system.step(y, renorm_every)
        d = (y - x).norm(dim=-1)
        total += torch.log(d / eps)
        y = x + (y - x) * (eps / d)[:, None]
    return float(total.mean()) / (n_blocks * renorm_every * system.dt)
