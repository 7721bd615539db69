"""2-D Kolmogorov flow: forced incompressible Navier-Stokes in vorticity form, pseudo-spectral.

On the periodic square ``[0, 2 pi)^2`` the vorticity ``omega = dv/dx - du/dy`` obeys::

    d omega/dt + u . grad(omega) = nu lap(omega) - mu omega + F(y),
    u = (d psi/dy, -d psi/dx),   lap(psi) = -omega,
    F(y) = -A k_f cos(k_f y)     (the curl of the body force f = (A sin(k_f y), 0)),

with ``nu = 1 / Re`` (unit length and forcing amplitude), linear drag ``mu`` and forcing
wavenumber ``k_f`` (Chandler & Kerswell 2013; Kochkov et al. 2021 add the drag).

Space: Fourier pseudo-spectral, the quadratic term de-aliased by the 2/3 rule (modes with
``|k_x|`` or ``|k_y| > N/3`` zeroed). Time: ETDRK4 (Cox & Matthews 2002) for the stiff
diagonal linear part ``L = -nu |k|^2 - mu``, with the phi-function coefficients evaluated by
the contour integral of Kassam & Trefethen (2005): fourth order, stable for the diffusion at
any step, explicit CFL limit only from advection.

Energy budget per unit area (``E = <|u|^2>/2``)::

    dE/dt = I - D - 2 mu E,   I = A <u sin(k_f y)>,   D = nu <omega^2>

which :func:`energy_budget` evaluates from a state; in a statistically steady state the time
means satisfy ``<I> = <D> + 2 mu <E>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from sciffusion.systems.base import Coordinate, System, Variable, check_positive, check_positive_int, pieces


class KolmogorovFlow(System):
    """Batched Kolmogorov flow, state = vorticity ``(B, N, N)`` on ``(y, x)``, CPU or GPU.

    Args:
        n: grid points per side (even, >= 8); default 64.
        reynolds: Re = 1 / nu.
        drag: linear drag mu.
        k_forcing: forcing wavenumber k_f.
        amplitude: forcing amplitude A.
        dt: time step (model time units).
    """

    name = "kolmogorov"
    time_units = "model time units"
    time_note = "non-dimensional: unit length, unit forcing amplitude"
    default_intervals: ClassVar[dict[str, float]] = {"lead_interval": 0.5, "spinup": 50.0}
    default_perturbation = 0.01

    def __init__(self, n: int = 64, reynolds: float = 100.0, drag: float = 0.1, k_forcing: int = 4,
                 amplitude: float = 1.0, dt: float = 0.01, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float64):
        super().__init__(device, dtype)
        self.n = check_positive_int(n, "n")
        if self.n < 8 or self.n % 2:
            raise ValueError(f"n (grid size) must be even and >= 8, got {n}")
        self.reynolds = check_positive(reynolds, "reynolds")
        self.nu = 1.0 / self.reynolds
        if drag < 0:
            raise ValueError(f"drag must be >= 0, got {drag}")
        self.drag = float(drag)
        self.k_forcing = check_positive_int(k_forcing, "k_forcing")
        if self.k_forcing > self.n // 3:
            raise ValueError(f"k_forcing={k_forcing} is not resolved on an n={n} grid (needs <= n/3)")
        self.amplitude = float(amplitude)
        self.dt = check_positive(dt, "dt")
        n_, cdt = self.n, self.dtype
        kx = torch.fft.rfftfreq(n_, 1.0 / n_, dtype=cdt)
        ky = torch.fft.fftfreq(n_, 1.0 / n_, dtype=cdt)
        self.kx, self.ky = kx[None, :].to(self.device), ky[:, None].to(self.device)
        k2 = self.kx**2 + self.ky**2
        self.k2 = k2
        self.inv_k2 = torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, 1.0), 0.0)
        cut = n_ // 3
        self.mask = ((self.kx.abs() <= cut) & (self.ky.abs() <= cut)).to(cdt)
        self.y = torch.arange(n_, dtype=cdt, device=self.device) * (2 * math.pi / n_)
        forcing = -self.amplitude * self.k_forcing * torch.cos(self.k_forcing * self.y)[:, None].expand(n_, n_)
        self.forcing_hat = torch.fft.rfft2(forcing) * self.mask
        self._etd = self._etdrk4_coefficients(self.dt)

    def params(self) -> dict[str, Any]:
        return {"n": self.n, "reynolds": self.reynolds, "drag": self.drag, "k_forcing": self.k_forcing,
                "amplitude": self.amplitude, "dt": self.dt}

    # -- spectral machinery ----------------------------------------------------------------
    def _etdrk4_coefficients(self, h: float, m: int = 32):
        lin = (-self.nu * self.k2 - self.drag).to(torch.float64)
        r = torch.exp(1j * math.pi * (torch.arange(1, m + 1, dtype=torch.float64) - 0.5) / m).to(self.device)
        lr = h * lin[..., None] + r
        el = torch.exp(lr)
        q = h * ((torch.exp(lr / 2) - 1) / lr).mean(-1).real
        f1 = h * ((-4 - lr + el * (4 - 3 * lr + lr**2)) / lr**3).mean(-1).real
        f2 = h * ((2 + lr + el * (lr - 2)) / lr**3).mean(-1).real
        f3 = h * ((-4 - 3 * lr - lr**2 + el * (4 - lr)) / lr**3).mean(-1).real
        e, e2 = torch.exp(h * lin), torch.exp(h * lin / 2)
        return tuple(t.to(self.dtype) for t in (e, e2, q, f1, f2, f3))

    def velocity_hat(self, w_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Spectral velocity ``(u_hat, v_hat)`` from spectral vorticity (psi = omega / |k|^2)."""
        psi = w_hat * self.inv_k2
        return 1j * self.ky * psi, -1j * self.kx * psi

    def nonlinear_hat(self, w_hat: torch.Tensor) -> torch.Tensor:
        """De-aliased ``-u . grad(omega) + F`` in spectral space."""
        n = self.n
        u_hat, v_hat = self.velocity_hat(w_hat)
        hats = torch.stack([u_hat, v_hat, 1j * self.kx * w_hat, 1j * self.ky * w_hat])
        u, v, wx, wy = torch.fft.irfft2(hats, s=(n, n))  # one batched transform
        return -torch.fft.rfft2(u * wx + v * wy) * self.mask + self.forcing_hat

    def step_hat(self, w_hat: torch.Tensor, n_steps: int = 1) -> torch.Tensor:
        """``n_steps`` ETDRK4 steps in spectral space."""
        e, e2, q, f1, f2, f3 = self._etd
        for _ in range(int(n_steps)):
            nv = self.nonlinear_hat(w_hat)
            a = e2 * w_hat + q * nv
            na = self.nonlinear_hat(a)
            b = e2 * w_hat + q * na
            nb = self.nonlinear_hat(b)
            c = e2 * a + q * (2 * nb - nv)
            nc = self.nonlinear_hat(c)
            w_hat = e * w_hat + f1 * nv + 2 * f2 * (na + nb) + f3 * nc
        return w_hat

    def step(self, x: torch.Tensor, n_steps: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.advance(x, n_steps)

    def advance(self, x: torch.Tensor, n_steps: int, generator: torch.Generator | None = None,
                callback: Callable[[int], Any] | None = None) -> torch.Tensor:
        """:meth:`System.advance` in spectral space throughout, so it equals ``step(x, n_steps)`` bit for bit."""
        w_hat = torch.fft.rfft2(x.to(self.device, self.dtype)) * self.mask
        for piece in pieces(n_steps):
            w_hat = self.step_hat(w_hat, piece)
            if callback is not None:
                callback(piece)
        return torch.fft.irfft2(w_hat, s=(self.n, self.n))

    def tendency(self, x: torch.Tensor) -> torch.Tensor:
        """``d omega / dt`` of a vorticity field (grid space)."""
        w_hat = torch.fft.rfft2(x) * self.mask
        lin = -self.nu * self.k2 - self.drag
        return torch.fft.irfft2(lin * w_hat + self.nonlinear_hat(w_hat), s=(self.n, self.n))

    def random_field(self, n: int, generator: torch.Generator, k_peak: float = 4.0) -> torch.Tensor:
        """Smooth random vorticity ``(n, N, N)``: white noise filtered by ``|k| exp(-|k|^2 / k_peak^2)``, unit rms."""
        noise = torch.randn(n, self.n, self.n, generator=generator, dtype=self.dtype).to(self.device)
        k = self.k2.sqrt()
        w = torch.fft.irfft2(torch.fft.rfft2(noise) * k * torch.exp(-(k / k_peak) ** 2) * self.mask, s=(self.n, self.n))
        return w / w.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()

    def initial_state(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return 2.0 * self.random_field(n, generator)

    def perturb(self, x: torch.Tensor, generator: torch.Generator, scale: float) -> torch.Tensor:
        """Add ``scale`` times a smooth unit-rms random vorticity field (broad spectrum, peak |k| = 8)."""
        return x + scale * self.random_field(x.shape[0], generator, k_peak=8.0)

    # -- diagnostics -----------------------------------------------------------------------
    def velocity(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u_hat, v_hat = self.velocity_hat(torch.fft.rfft2(x))
        return torch.fft.irfft2(u_hat, s=(self.n, self.n)), torch.fft.irfft2(v_hat, s=(self.n, self.n))

    def energy_budget(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-member ``energy E``, ``injection I``, ``dissipation D = nu <omega^2>``, ``drag_loss 2 mu E``."""
        u, v = self.velocity(x)
        energy = 0.5 * (u**2 + v**2).mean(dim=(-2, -1))
        injection = self.amplitude * (u * torch.sin(self.k_forcing * self.y)[:, None]).mean(dim=(-2, -1))
        dissipation = self.nu * (x**2).mean(dim=(-2, -1))
        return {"energy": energy, "injection": injection, "dissipation": dissipation, "drag_loss": 2 * self.drag * energy}

    def energy_spectrum(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Shell-summed kinetic energy spectrum ``E(k)``, ``sum_k E(k) = <|u|^2>/2``; mean over leading dims."""
        n = self.n
        w_hat = torch.fft.rfft2(x) / n**2
        dens = 0.5 * w_hat.abs() ** 2 * self.inv_k2
        dens = dens * torch.where(self.kx == 0, 1.0, 2.0)
        shells = torch.round(self.k2.sqrt()).long().expand_as(dens[(0,) * (dens.ndim - 2)])
        flat = dens.reshape(-1, dens.shape[-2] * dens.shape[-1]).mean(0)
        spec = torch.zeros(int(shells.max()) + 1, dtype=flat.dtype, device=flat.device)
        spec.index_add_(0, shells.reshape(-1), flat)
        return np.arange(spec.numel()), spec.cpu().numpy()

    # -- output ----------------------------------------------------------------------------
    def fields(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"vorticity": x}

    def variables(self) -> dict[str, Variable]:
        return {"vorticity": Variable(("y", "x"), {"long_name": "relative vorticity", "standard_name": "atmosphere_relative_vorticity", "units": "1"})}

    def coords(self) -> dict[str, Coordinate]:
        v = np.arange(self.n) * (2 * np.pi / self.n)
        return {"y": Coordinate(v, {"long_name": "y", "units": "1", "axis": "Y"}),
                "x": Coordinate(v.copy(), {"long_name": "x", "units": "1", "axis": "X"})}
