"""Two-scale Lorenz-96 truth and its stochastically parametrised one-scale forecast model.

The truth is the two-level Lorenz (1996) system (equations in :mod:`sciffusion.systems.lorenz96`)
with the setting of Arnold, Moroz & Palmer (2013, Phil. Trans. R. Soc. A 371, 20110479), the
``c = 10`` case of Wilks (2005, QJRMS 131, 389): K=8, J=32, h=1, b=10, c=10, F=20, RK4 with
``dt = 0.001`` (Wilks used 1e-4; halving 0.001 moved the fitted closure by about as much as another seed).
Only the slow variables ``x (k)`` are output, so the forecast model below can be compared with it.

The forecast model resolves only X and replaces the coupling ``(h c / b) sum_j Y_{j,k}`` by a
cubic closure plus additive AR(1) noise (Arnold et al. 2013, eq. 2.3 and the "additive AR(1)"
scheme)::

    dX_k/dt = X_{k-1} (X_{k+1} - X_{k-2}) - X_k + F - U(X_k) - e_k,   U(X) = b0 + b1 X + b2 X^2 + b3 X^3
    e_k(t + dt) = phi e_k(t) + sigma sqrt(1 - phi^2) z,   z ~ N(0, 1)

stepped with RK4 at ``dt = 0.005`` for the deterministic part and ``X <- X - dt e`` after each
step. :func:`fit_closure` fits ``U``, ``phi`` and ``sigma`` to the truth's subgrid tendency as
those papers do, from the truth sampled every ``dt = 0.005``: ``U_k(t) = R_k(X(t)) - (X_k(t + dt) -
X_k(t)) / dt`` with ``R`` the resolved (uncoupled) tendency. Arnold et al. (2013, table 1) report for this truth
``U = 0.341 + 1.30 X - 0.0136 X^2 - 0.00235 X^3``, ``phi = 0.986``, ``sigma = 1.99``
(:data:`ARNOLD_2013`, the defaults of :class:`StochasticLorenz96`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from sciffusion.systems.base import Coordinate, System, Variable, check_positive, member_generator
from sciffusion.systems.lorenz96 import Lorenz96, l96_tendency, rk4_step

#: closure and AR(1) noise of Arnold et al. (2013, table 1) for K=8, J=32, h=1, b=c=10, F=20 (phi per 0.005)
ARNOLD_2013: dict[str, Any] = {"coefficients": (0.341, 1.30, -0.0136, -0.00235), "phi": 0.986, "sigma": 1.99}


class _SlowX:
    """What both models share: the output, the slow variables ``x (k)`` (the first ``k`` entries of the
    state), and the defaults of :func:`~sciffusion.systems.simulate`."""

    time_units = "model time units"
    default_intervals: ClassVar[dict[str, float]] = {"lead_interval": 0.05, "spinup": 5.0}
    default_perturbation = 0.1

    def fields(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": x[..., : self.k]}

    def variables(self) -> dict[str, Variable]:
        return {"x": Variable(("k",), {"long_name": "Lorenz-96 slow variable X_k", "units": "1"})}

    def coords(self) -> dict[str, Coordinate]:
        return {"k": Coordinate(np.arange(self.k), {"long_name": "site index on the periodic ring", "units": "1"})}


class Lorenz96TwoScale(_SlowX, Lorenz96):
    """The two-scale truth (state ``(B, K + K J)``, X then Y); outputs only ``x (k)``.

    Defaults are the Arnold et al. (2013) / Wilks (2005) setting (module docstring). Perturbations
    (:meth:`perturb`) act on X only: the fast variables decorrelate within ~0.1 time units anyway.
    """

    name = "lorenz96-two-scale"
    time_note = "1 model time unit = 5 days (Lorenz 1996); truth dt = 0.001"

    def __init__(self, k: int = 8, j: int = 32, forcing: float = 20.0, dt: float = 0.001, h: float = 1.0,
                 b: float = 10.0, c: float = 10.0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64):
        if j < 1:
            raise ValueError(f"j (fast variables per slow variable) must be >= 1, got {j!r}")
        super().__init__(k=k, forcing=forcing, dt=dt, j=j, h=h, b=b, c=c, device=device, dtype=dtype)

    def perturb(self, x: torch.Tensor, generator: torch.Generator, scale: float) -> torch.Tensor:
        noise = torch.zeros_like(x)
        noise[..., : self.k] = torch.randn(*x.shape[:-1], self.k, generator=generator, dtype=x.dtype).to(x.device)
        return x + scale * noise


class StochasticLorenz96(_SlowX, System):
    """One-scale forecast model with a cubic closure and additive AR(1) noise (module docstring).

    The state is ``(B, 2 K)``: X, then the AR(1) noise e. :meth:`perturb` also accepts a truth
    state ``(B, K + K J)``: it keeps X, adds ``scale * N(0, I)`` and draws e from its stationary
    law N(0, sigma^2), so ``simulate(truth, forecast_system=model)`` runs it from the truth's
    initial states. ``phi`` is the lag-one autocorrelation per step ``dt``.

    Args:
        k, forcing: K and F of the truth. dt: RK4 step (0.005 as Wilks 2005, Arnold et al. 2013).
        coefficients: ``(b0, b1, b2, b3)`` of U(X). phi, sigma: AR(1) noise (sigma = 0: deterministic).
        multiplicative: the noise multiplies the closure, ``X <- X - dt U(X) e`` (Arnold et al.
            2013's multiplicative scheme; sigma is then dimensionless), instead of ``X <- X - dt e``.
    """

    name = "lorenz96-stochastic"
    time_note = "1 model time unit = 5 days; dt = 0.005"

    def __init__(self, k: int = 8, forcing: float = 20.0, dt: float = 0.005,
                 coefficients=ARNOLD_2013["coefficients"], phi: float = ARNOLD_2013["phi"],
                 sigma: float = ARNOLD_2013["sigma"], multiplicative: bool = False, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float64):
        super().__init__(device, dtype)
        self.multiplicative = bool(multiplicative)
        self.k, self.forcing, self.dt = int(k), float(forcing), check_positive(dt, "dt")
        self.coefficients = tuple(float(c) for c in coefficients)
        if not -1 < phi < 1 or sigma < 0:
            raise ValueError(f"need -1 < phi < 1 and sigma >= 0, got phi={phi}, sigma={sigma}")
        self.phi, self.sigma = float(phi), float(sigma)
        self.noise_std = self.sigma  # simulate() passes per-member generators when this is non-zero

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "forcing": self.forcing, "dt": self.dt, "coefficients": list(self.coefficients),
                "phi": self.phi, "sigma": self.sigma, "multiplicative": self.multiplicative}

    def closure(self, x: torch.Tensor) -> torch.Tensor:
        """U(X) = b0 + b1 X + b2 X^2 + b3 X^3 (Horner)."""
        out = torch.zeros_like(x)
        for c in reversed(self.coefficients):
            out = out * x + c
        return out

    def tendency(self, x: torch.Tensor) -> torch.Tensor:
        return l96_tendency(x, self.forcing) - self.closure(x)

    def step(self, x: torch.Tensor, n_steps: int = 1, generator=None) -> torch.Tensor:
        big, e = x[..., : self.k], x[..., self.k :]
        for _ in range(int(n_steps)):
            new = rk4_step(self.tendency, big, self.dt)
            if self.sigma:
                z = Lorenz96._noise(e, generator)
                e = self.phi * e + self.sigma * (1 - self.phi**2) ** 0.5 * z
                new = new - self.dt * e * (self.closure(big) if self.multiplicative else 1.0)
            big = new
        return torch.cat([big, e], dim=-1)

    def perturb(self, x: torch.Tensor, generator: torch.Generator, scale: float) -> torch.Tensor:
        z = torch.randn(*x.shape[:-1], 2 * self.k, generator=generator, dtype=x.dtype).to(x.device)
        return torch.cat([x[..., : self.k] + scale * z[..., : self.k], self.sigma * z[..., self.k :]], dim=-1)

    def initial_state(self, n: int, generator: torch.Generator) -> torch.Tensor:
        x = self.forcing + 0.01 * torch.randn(n, self.k, generator=generator, dtype=self.dtype)
        return torch.cat([x, torch.zeros_like(x)], dim=-1).to(self.device)

    @classmethod
    def fit(cls, truth: Lorenz96TwoScale, dt: float = 0.005, **kwargs: Any) -> StochasticLorenz96:
        """The forecast model with U, phi and sigma fitted by :func:`fit_closure` (``kwargs`` go there)."""
        fit = fit_closure(truth, dt=dt, **kwargs)
        return cls(k=truth.k, forcing=truth.forcing, dt=dt, coefficients=fit["coefficients"], phi=fit["phi"],
                   sigma=fit["sigma"], device=truth.device, dtype=truth.dtype)


def fit_closure(truth: Lorenz96TwoScale, *, dt: float = 0.005, n_traj: int = 8, duration: float = 50.0,
                spinup: float = 5.0, seed: int = 0, resolved: str = "euler") -> dict[str, Any]:
    """Least-squares cubic closure and AR(1) residual noise from truth runs (Wilks 2005, sect. 3).

    ``n_traj`` independent truth trajectories are spun up for ``spinup`` and sampled every ``dt``
    for ``duration``; the subgrid tendency is ``U = (S(X(t)) - X(t + dt)) / dt`` with ``S`` one step of
    the resolved equations: forward Euler (``resolved="euler"``, the finite-difference tendency of
    the papers, which reproduces their table) or RK4 (``"rk4"``, consistent with the forecast
    model's own step, a smaller closure slope: 1.12 vs 1.30); ``U ~ b0 + b1 X + b2 X^2 + b3 X^3`` by least squares over all
    samples and sites; the residual's lag-``dt`` autocorrelation is ``phi`` and its std ``sigma``.
    Returns ``{"coefficients", "phi", "sigma", "x_mean", "x_std", "n_samples"}`` (X climatology too).
    """
    every = round(dt / truth.dt)
    if abs(every * truth.dt - dt) > 1e-9 * dt:
        raise ValueError(f"dt={dt} must be a multiple of the truth step {truth.dt}")
    x = truth.initial_state(n_traj, member_generator(seed))
    x = truth.step(x, round(spinup / truth.dt))
    n = round(duration / dt)
    traj = truth.integrate(x, n, every)[..., : truth.k]  # (B, n + 1, K)
    if resolved not in ("euler", "rk4"):
        raise ValueError(f"resolved must be 'euler' or 'rk4', got {resolved!r}")
    f = lambda v: l96_tendency(v, truth.forcing)  # noqa: E731
    x0 = traj[:, :-1]
    step = x0 + dt * f(x0) if resolved == "euler" else rk4_step(f, x0, dt)
    u = ((step - traj[:, 1:]) / dt).cpu().numpy()
    xs = traj[:, :-1].cpu().numpy()
    design = np.stack([xs.ravel() ** p for p in range(4)], axis=1)
    coef, *_ = np.linalg.lstsq(design, u.ravel(), rcond=None)
    res = u - (design @ coef).reshape(u.shape)
    phi = float(np.sum(res[:, 1:] * res[:, :-1]) / np.sum(res[:, :-1] ** 2))
    return {"coefficients": tuple(float(c) for c in coef), "phi": phi, "sigma": float(res.std()),
            "x_mean": float(xs.mean()), "x_std": float(xs.std()), "n_samples": int(u.size)}
