"""Kolmogorov flow with additive AR(1) stochastic vorticity forcing: an imperfect forecast model
whose ensemble spread represents its model error.

The forecast model is :class:`~sciffusion.systems.KolmogorovFlow` (with its own, imperfect,
``reynolds`` and ``drag``) plus a random forcing ``eta`` of the vorticity equation::

    d omega/dt = [KolmogorovFlow tendency](omega) + eta(t, x, y)
    eta_{n+1} = phi eta_n + sigma sqrt(1 - phi^2) xi_n,   phi = exp(-dt / tau)

``xi_n`` are independent smooth random fields with the spatial structure of
:meth:`KolmogorovFlow.random_field`: white noise filtered by ``|k| exp(-|k|^2 / k_peak^2)``
(de-aliased, zero mean), normalised to unit rms over the grid. ``eta`` is thus a zero-mean AR(1)
process in time (Ornstein-Uhlenbeck sampled every ``dt``) with stationary grid mean square
``sigma^2`` (vorticity per time unit) and lag-``dt`` autocorrelation ``phi``; ``tau`` is its
correlation time in model time units. Within one ETDRK4 step ``eta`` is held constant (it enters
with the deterministic forcing, so the step integrates it against the linear damping exactly);
it is updated after each step.

This is the additive stochastic forcing / stochastic parametrisation approach to representing
model error in an ensemble: random, temporally correlated tendency perturbations with a fixed
spatial pattern, their amplitude tuned so that the ensemble is reliable (Buizza, Miller & Palmer
1999, QJRMS 125, 2887; Berner et al. 2009, J. Atmos. Sci. 66, 603 (spectral backscatter);
Palmer et al. 2009, ECMWF Tech. Memo. 598; the review of Berner et al. 2017, Bull. Amer. Meteor.
Soc. 98, 565, "Stochastic parameterization: toward a new view of weather and climate models"; and
for the AR(1) noise itself Arnold, Moroz & Palmer 2013, Phil. Trans. R. Soc. A 371, 20110479, as
in :class:`~sciffusion.systems.StochasticLorenz96`). What is ours: the choice of the random-field
spectrum of the flow's own initial perturbations as the spatial pattern, the frozen-over-a-step
coupling to ETDRK4, and fitting ``sigma``, ``tau`` by the spread-skill ratio of the ensemble
(benchmarks/seeds_kolmogorov_reliable.py) rather than from coarse-graining a finer model.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from sciffusion.systems.base import check_positive, pieces
from sciffusion.systems.kolmogorov import KolmogorovFlow


class StochasticKolmogorovFlow(KolmogorovFlow):
    """Kolmogorov flow plus additive AR(1) vorticity forcing (module docstring).

    The state is ``(B, 2, N, N)``: vorticity, then the forcing ``eta``. :meth:`fields` outputs
    only the vorticity, and :meth:`perturb` also accepts a :class:`KolmogorovFlow` state ``(B, N, N)``
    (it perturbs the vorticity as :meth:`KolmogorovFlow.perturb` does and draws ``eta`` from its
    stationary law), so ``simulate(truth, forecast_system=model)`` runs it from a deterministic
    truth. With ``sigma > 0`` every random draw comes from the ``generator`` passed to
    :meth:`step` / :meth:`advance` (one generator, or a list with one per member, as
    :func:`~sciffusion.systems.simulate` passes); ``sigma = 0`` is :class:`KolmogorovFlow` bit for bit.

    Args:
        n, reynolds, drag, k_forcing, amplitude, dt, device, dtype: as :class:`KolmogorovFlow`.
        sigma: stationary rms of the forcing ``eta`` (>= 0; 0: deterministic).
        tau: its correlation time (> 0, model time units); ``phi = exp(-dt / tau)`` per step.
        k_peak: wavenumber scale of the forcing's spectrum ``|k| exp(-|k|^2 / k_peak^2)``.
    """

    name = "kolmogorov-stochastic"
    default_intervals: ClassVar[dict[str, float]] = {"lead_interval": 0.5, "spinup": 50.0}

    def __init__(self, n: int = 64, reynolds: float = 100.0, drag: float = 0.1, k_forcing: int = 4,
                 amplitude: float = 1.0, dt: float = 0.01, sigma: float = 0.0, tau: float = 1.0, k_peak: float = 4.0,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64):
        super().__init__(n=n, reynolds=reynolds, drag=drag, k_forcing=k_forcing, amplitude=amplitude, dt=dt,
                         device=device, dtype=dtype)
        if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not 0 <= sigma < math.inf:
            raise ValueError(f"sigma (forcing rms) must be a finite number >= 0, got {sigma!r}")
        self.sigma = float(sigma)
        self.tau, self.k_peak = check_positive(tau, "tau"), check_positive(k_peak, "k_peak")
        self.phi = math.exp(-self.dt / self.tau)
        self.noise_std = self.sigma  # simulate() passes per-member generators when this is non-zero
        k = self.k2.sqrt()
        self._filter = k * torch.exp(-(k / self.k_peak) ** 2) * self.mask
        self._eta_hat: torch.Tensor | None = None  # the forcing of the step being taken (spectral)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "sigma": self.sigma, "tau": self.tau, "k_peak": self.k_peak}

    # -- the forcing process -----------------------------------------------------------------
    def innovation(self, batch: int, generator) -> torch.Tensor:
        """Unit-rms random fields ``(batch, N, N)`` with the forcing's spectrum; ``generator``: one
        generator, or a list of ``batch`` generators (one field each)."""
        shape = (self.n, self.n)
        if isinstance(generator, (list, tuple)):
            if len(generator) != batch:
                raise ValueError(f"got {len(generator)} generators for {batch} members")
            noise = torch.stack([torch.randn(shape, generator=g, dtype=self.dtype) for g in generator])
        elif isinstance(generator, torch.Generator):
            noise = torch.randn(batch, *shape, generator=generator, dtype=self.dtype)
        else:
            raise ValueError("generator (a torch.Generator or a list of them) is required when sigma > 0")
        w = torch.fft.irfft2(torch.fft.rfft2(noise.to(self.device)) * self._filter, s=shape)
        return w / w.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()

    def stationary_forcing(self, batch: int, generator) -> torch.Tensor:
        """A draw ``(batch, N, N)`` of ``eta`` from its stationary law (zeros when ``sigma = 0``, no draw)."""
        if not self.sigma:
            return torch.zeros(batch, self.n, self.n, dtype=self.dtype, device=self.device)
        return self.sigma * self.innovation(batch, generator)

    def update_forcing(self, eta: torch.Tensor, generator) -> torch.Tensor:
        """One AR(1) step ``phi eta + sigma sqrt(1 - phi^2) xi`` of the forcing ``(B, N, N)``."""
        xi = self.innovation(eta.shape[0], generator)
        return self.phi * eta + self.sigma * math.sqrt(1 - self.phi**2) * xi

    # -- dynamics ----------------------------------------------------------------------------
    def nonlinear_hat(self, w_hat: torch.Tensor) -> torch.Tensor:
        """:meth:`KolmogorovFlow.nonlinear_hat` plus the stochastic forcing of the current step."""
        out = super().nonlinear_hat(w_hat)
        return out if self._eta_hat is None else out + self._eta_hat

    def _steps_hat(self, w_hat: torch.Tensor, eta: torch.Tensor, n_steps: int,
                   generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n_steps`` ETDRK4 steps of the spectral vorticity with ``eta`` frozen in each, then its AR(1) update."""
        try:
            for _ in range(int(n_steps)):
                self._eta_hat = torch.fft.rfft2(eta) * self.mask
                w_hat = self.step_hat(w_hat, 1)
                eta = self.update_forcing(eta, generator)
        finally:
            self._eta_hat = None
        return w_hat, eta

    def step(self, x: torch.Tensor, n_steps: int = 1, generator=None) -> torch.Tensor:
        """``n_steps`` steps of a ``(B, 2, N, N)`` state (as :meth:`advance`, which it equals bit for bit)."""
        return self.advance(x, n_steps, generator=generator)

    def advance(self, x: torch.Tensor, n_steps: int, generator=None,
                callback: Callable[[int], Any] | None = None) -> torch.Tensor:
        """:meth:`System.advance`, in spectral space throughout; ``sigma = 0`` runs :meth:`KolmogorovFlow.advance`."""
        x = x.to(self.device, self.dtype)
        w, eta = x[:, 0].contiguous(), x[:, 1]
        if not self.sigma:
            return torch.stack([KolmogorovFlow.advance(self, w, n_steps, callback=callback), eta], dim=1)
        w_hat = torch.fft.rfft2(w) * self.mask
        for piece in pieces(n_steps):
            w_hat, eta = self._steps_hat(w_hat, eta, piece, generator)
            if callback is not None:
                callback(piece)
        return torch.stack([torch.fft.irfft2(w_hat, s=(self.n, self.n)), eta], dim=1)

    def tendency(self, x: torch.Tensor) -> torch.Tensor:
        """``d omega / dt`` ``(B, N, N)`` of a state ``(B, 2, N, N)``, the forcing ``eta`` included."""
        return super().tendency(x[:, 0]) + x[:, 1]

    # -- states ------------------------------------------------------------------------------
    def initial_state(self, n: int, generator: torch.Generator) -> torch.Tensor:
        w = super().initial_state(n, generator)
        return torch.stack([w, self.stationary_forcing(n, generator)], dim=1)

    def perturb(self, x: torch.Tensor, generator: torch.Generator, scale: float) -> torch.Tensor:
        """Perturb the vorticity as :meth:`KolmogorovFlow.perturb`, then draw ``eta`` from its
        stationary law; ``x`` is ``(B, 2, N, N)`` or a vorticity ``(B, N, N)`` (a deterministic truth's state)."""
        w = x if x.ndim == 3 else x[:, 0]
        w = super().perturb(w, generator, scale).to(self.device, self.dtype)
        return torch.stack([w, self.stationary_forcing(w.shape[0], generator)], dim=1)

    def fields(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"vorticity": x[:, 0]}
