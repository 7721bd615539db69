r"""2-D Navier-Stokes on the unit torus, the FNO / DiffusionPDE data set: vorticity ``w(x, y, t)`` on ``[0, 1)^2``::

    dw/dt + u . grad(w) = nu lap(w) + f,   u = (d psi/dy, -d psi/dx),   -lap(psi) = w,
    f(x, y) = A (sin(2 pi (x + y)) + cos(2 pi (x + y))),   nu = 1e-3,   A = 0.1,

``w0 ~ GRF`` (periodic, :func:`torus_grf`: ``alpha = 2.5, tau = 7``), and the task pair
``a = w0 -> u = w(T = 1)``. Read from ``dataset_generation/non-bounded-ns/ns_2d.py`` of
``jhhuangchloe/DiffusionPDE`` (the FNO generator of Li et al. 2021, ``ns_2d.py`` +
``random_fields.GaussianRF``; checked here), whose sampling script takes ``a = w0`` and
``u = w(T)`` (the last of 10 snapshots, T = 1); DiffusionPDE's *forward* task observes 500 nodes
of ``w0`` (mask seed 1) and recovers ``w(T)``, its *inverse* observes ``w(T)`` (seed 0) and
recovers ``w0`` (:meth:`PairSystem.observation_task`).

Solver: :class:`NavierStokesFlow` is :class:`~sciffusion.systems.KolmogorovFlow`'s pseudo-spectral
ETDRK4 machinery (2/3 de-aliasing, exact integrating factor for the viscous term) on the rescaled
square ``x' = 2 pi x``: the vorticity and the time are unchanged, the advection term is invariant
and the viscosity becomes ``nu' = (2 pi)^2 nu``, so ``KolmogorovFlow(reynolds=1 / nu', drag=0)``
with its forcing replaced by ``f`` solves this equation. The FNO data used Crank-Nicolson for the
viscous term and forward Euler for advection at ``dt = 1e-4`` (first order); ETDRK4 at the default
``dt = 0.02`` (50 steps to T = 1) agrees with its own ``dt = 1/800`` solution to 5e-10 (n = 64) and
8e-10 (n = 128) in relative L2, with fourth-order convergence (``dt = 0.1 .. 0.005``; the flow is
slow, ``|u| <= 0.08``, ``w0`` RMS ~0.23). The solver also filters the state to the de-aliased
modes (``|k_x|, |k_y| <= n/3``; FNO filters only the advection term, and ``a`` stores ``w0``
unfiltered). Against a re-implementation of the FNO scheme at its ``dt = 1e-4`` on the same two
``w0``, ``w(1)`` differs by 5.6e-6 (n = 64) and 3.9e-6 (n = 128) in relative L2, which is that
scheme's own time error (its ``dt = 2e-4`` run differs from its ``dt = 1e-4`` run by the same
amounts; ``w`` itself changes by 39 % and 46 %).
Not verified: the paper's text (only the code was read).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from sciffusion.systems.base import Coordinate, Variable, check_positive, check_positive_int, member_generator, steps_in
from sciffusion.systems.kolmogorov import KolmogorovFlow
from sciffusion.systems.poisson import PairSystem


def torus_grf(n: int, generator: torch.Generator, n_samples: int = 1, *, alpha: float = 2.5, tau: float = 7.0,
              sigma: float | None = None) -> torch.Tensor:
    """``(n_samples, n, n)`` periodic GRFs on ``[0, 1)^2`` (FNO's ``GaussianRF(2, n, alpha, tau)``), float64.

    ``w = Re IFFT2(n^2 sqrt(2) sigma (4 pi^2 |k|^2 + tau^2)^(-alpha/2) (xi + i eta))``, ``xi, eta ~ N(0, 1)``,
    mean mode zero, ``sigma = tau^(alpha - 1)`` by default (FNO: ``tau^(0.5 (2 alpha - d))``, d = 2).
    """
    n = check_positive_int(n, "n")
    alpha, tau = check_positive(alpha, "alpha"), check_positive(tau, "tau")
    sigma = tau ** (alpha - 1.0) if sigma is None else check_positive(sigma, "sigma")
    k = torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    sqrt_eig = n**2 * math.sqrt(2.0) * sigma * (4 * math.pi**2 * k2 + tau**2) ** (-alpha / 2)
    sqrt_eig[0, 0] = 0.0
    re = torch.randn(n_samples, n, n, generator=generator, dtype=torch.float64)
    im = torch.randn(n_samples, n, n, generator=generator, dtype=torch.float64)
    return torch.fft.ifft2(sqrt_eig * torch.complex(re, im)).real


class NavierStokesFlow(KolmogorovFlow):
    """The time-dependent system: forced vorticity on the unit torus, state ``(B, n, n)`` on ``(y, x)``.

    Args:
        n: grid points per side (even, >= 8).
        viscosity: nu (> 0); FNO / DiffusionPDE: 1e-3.
        amplitude: A of the forcing ``A (sin(2 pi (x + y)) + cos(2 pi (x + y)))``; 0.1.
        dt: ETDRK4 step (default 0.02, see the module docstring).
    """

    name = "navier-stokes-flow"
    time_units = "1"
    time_note = "unit torus [0, 1)^2, FNO / DiffusionPDE units"
    default_intervals: ClassVar[dict[str, float]] = {"lead_interval": 0.1, "spinup": 0.0}

    def __init__(self, n: int = 128, viscosity: float = 1e-3, amplitude: float = 0.1, dt: float = 0.02,
                 alpha: float = 2.5, tau: float = 7.0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float64):
        self.viscosity = check_positive(viscosity, "viscosity")
        self.forcing_amplitude = float(amplitude)
        if not math.isfinite(self.forcing_amplitude):
            raise ValueError(f"amplitude must be finite, got {amplitude}")
        self.alpha, self.tau = check_positive(alpha, "alpha"), check_positive(tau, "tau")
        super().__init__(n=n, reynolds=1.0 / ((2 * math.pi) ** 2 * self.viscosity), drag=0.0, k_forcing=1,
                         amplitude=0.0, dt=dt, device=device, dtype=dtype)
        s = self.y[:, None] + self.y[None, :]  # 2 pi (x + y) on the (y, x) grid
        self.forcing = self.forcing_amplitude * (torch.sin(s) + torch.cos(s))
        self.forcing_hat = torch.fft.rfft2(self.forcing) * self.mask

    def params(self) -> dict[str, Any]:
        return {"n": self.n, "viscosity": self.viscosity, "amplitude": self.forcing_amplitude, "dt": self.dt,
                "alpha": self.alpha, "tau": self.tau}

    def initial_state(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """FNO's initial vorticity, :func:`torus_grf` with this system's ``alpha, tau``."""
        return torus_grf(self.n, generator, n, alpha=self.alpha, tau=self.tau).to(self.device, self.dtype)

    def velocity(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity ``(u, v)`` in unit-torus units."""
        u, v = super().velocity(x)
        return u / (2 * math.pi), v / (2 * math.pi)

    def energy_budget(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per member: ``energy E = <|u|^2>/2``, ``injection I = <psi f>``, ``dissipation D = nu <w^2>``;
        ``dE/dt = I - D`` (advection conserves E)."""
        u, v = self.velocity(x)
        psi = torch.fft.irfft2(torch.fft.rfft2(x) * self.inv_k2, s=(self.n, self.n)) / (2 * math.pi) ** 2
        return {"energy": 0.5 * (u**2 + v**2).mean(dim=(-2, -1)),
                "injection": (psi * self.forcing).mean(dim=(-2, -1)),
                "dissipation": self.viscosity * (x**2).mean(dim=(-2, -1))}

    def energy_spectrum(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Shell-summed ``E(k)`` over integer wavenumbers ``|k|`` of the unit torus, ``sum_k E(k) = <|u|^2>/2``."""
        k, spec = super().energy_spectrum(x)
        return k, spec / (2 * math.pi) ** 2

    def variables(self) -> dict[str, Variable]:
        return {"vorticity": Variable(("y", "x"), {"long_name": "vorticity", "units": "1"})}

    def coords(self) -> dict[str, Coordinate]:
        v = np.arange(self.n) / self.n
        return {"y": Coordinate(v, {"long_name": "y", "units": "1", "axis": "Y"}),
                "x": Coordinate(v.copy(), {"long_name": "x", "units": "1", "axis": "X"})}

    def solve(self, w0: torch.Tensor, time: float = 1.0) -> torch.Tensor:
        """``w(time)`` from ``w0 (..., n, n)``: differentiable (autograd through the ETDRK4 steps)."""
        if w0.ndim < 2 or tuple(w0.shape[-2:]) != (self.n, self.n):
            raise ValueError(f"w0 must have shape (..., {self.n}, {self.n}), got {tuple(w0.shape)}")
        steps = steps_in(time, self.dt, "time", "ETDRK4 step")
        lead = w0.shape[:-2]
        return self.advance(w0.reshape(-1, self.n, self.n), steps).reshape(*lead, self.n, self.n)


class NavierStokes(PairSystem):
    """DiffusionPDE's Navier-Stokes pairs ``a = w0`` (GRF) and ``u = w(T)`` (:class:`NavierStokesFlow`).

    Args:
        n: grid points per side (even, >= 8; DiffusionPDE: 128).
        viscosity, amplitude, dt, alpha, tau: as :class:`NavierStokesFlow`.
        time: T, the time of ``u`` (1).
        batch: members integrated together (memory: ~40 complex fields of ``batch x n x n/2``).

    Sample ``i`` is drawn from :func:`~sciffusion.systems.member_generator` ``(seed, i)``, whatever the
    number of samples.
    """

    name = "navier-stokes"
    periodic = True
    long_names = {"a": "initial vorticity w(t=0)", "u": "vorticity w(t=T)"}

    def __init__(self, n: int = 128, viscosity: float = 1e-3, amplitude: float = 0.1, time: float = 1.0,
                 dt: float = 0.02, alpha: float = 2.5, tau: float = 7.0, batch: int = 100,
                 device: str | torch.device = "cpu"):
        self.flow = NavierStokesFlow(n, viscosity, amplitude, dt, alpha, tau, device=device)
        self.n, self.time, self.batch = self.flow.n, float(time), check_positive_int(batch, "batch")
        self.steps = steps_in(self.time, self.flow.dt, "time", "ETDRK4 step")

    def params(self) -> dict[str, Any]:
        return {**self.flow.params(), "time": self.time}

    def sample(self, n_samples: int, seed: int = 0, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(a, u) = (w0, w(T))``, each ``(n_samples, n, n)`` float64."""
        n_samples = check_positive_int(n_samples, "n_samples")
        w0 = torch.cat([torus_grf(self.n, member_generator(seed, start + i), alpha=self.flow.alpha, tau=self.flow.tau)
                        for i in range(n_samples)])
        with torch.no_grad():
            wt = torch.cat([self.flow.solve(w0[b:b + self.batch].to(self.flow.device), self.time).cpu()
                            for b in range(0, n_samples, self.batch)])
        return w0.numpy(), wt.numpy()
