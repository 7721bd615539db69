"""Shallow water on the rotating sphere, spectral, batched (transforms from torch-harmonics).

Vorticity-divergence form (Williamson et al. 1992) with geopotential ``Phi = g h``::

    d zeta/dt  = -div((zeta + f) u)
    d delta/dt =  k . curl((zeta + f) u) - lap(Phi + |u|^2 / 2)
    d Phi/dt   = -div(Phi u)

``f = 2 Omega sin(lat)``; ``u`` from ``zeta, delta`` by the inverse vector spherical-harmonic
transform. The spherical-harmonic transforms, the Galewsky et al. (2004) barotropically unstable
jet (re-balanced here on the truncated grid, see ``_balanced_jet``) and the scale-selective
hyperdiffusion ``exp(-dt (lap / lap_max)^4 / 2 h)`` on vorticity and divergence are those of
``torch_harmonics.examples.ShallowWaterSolver`` (torch-harmonics 0.9.3); its own ``timestep`` is single-state Adams-Bashforth, so we step a batch ``(B, 3, lmax, mmax)``
with classical RK4 followed by the hyperdiffusion, which keeps the state self-contained (any
state can be perturbed and restarted). Mass ``int h dA`` is conserved to round-off (the l=0
mode of a divergence is zero); total energy ``int (h |u|^2 + g h^2) / 2 dA`` drifts only by the
hyperdiffusion.

torch-harmonics is optional and imported lazily; install it with
``pip install --no-deps torch-harmonics==0.9.3`` (a plain install replaces CPU torch).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import numpy as np
import torch

from sciffusion.systems.base import Coordinate, System, Variable, check_positive, check_positive_int

INSTALL_HINT = "pip install --no-deps torch-harmonics==0.9.3"


def _solver_class():
    try:
        with warnings.catch_warnings():  # torch-harmonics 0.9.3 uses the deprecated torch.jit.script_method
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch_harmonics.examples import ShallowWaterSolver
    except Exception as exc:  # ImportError, or an ABI error from its compiled kernels
        raise ImportError(
            f"the shallow-water system needs torch-harmonics ({exc}); install it with `{INSTALL_HINT}`"
        ) from exc
    return ShallowWaterSolver


class ShallowWater(System):
    """Batched spherical shallow water; state = spectral ``(Phi, zeta, delta)`` ``(B, 3, lmax, mmax)``.

    Args:
        nlat, nlon: equiangular lat-lon output grid (default 64 x 128).
        dt_seconds: RK4 step in seconds (default 600).
        lmax: spectral truncation, default ``ceil(nlat / 3)`` (larger went to NaN in tests of the
            torch-harmonics example).
        bump_amplitude: height of the Galewsky perturbation bump in metres (120 m in the paper).
        random_longitude: place each truth's bump at a random longitude (else at 180 degrees).
        hyperdiffusion_hours: e-folding time of the smallest resolved scale under the
            ``(lap / lap_max)^4`` hyperdiffusion (2 h as in torch-harmonics); ``None`` turns it off.
            On coarse grids (nlat < 64) it also damps the jet itself.
    """

    name = "shallow-water"
    time_units = "hours"
    time_note = "dt in hours; SI units for fields"
    default_intervals: ClassVar[dict[str, float]] = {"lead_interval": 6.0, "spinup": 0.0}
    default_perturbation = 1.0  # metres of smooth random height perturbation

    def __init__(self, nlat: int = 64, nlon: int = 128, dt_seconds: float = 600.0, lmax: int | None = None,
                 bump_amplitude: float = 120.0, random_longitude: bool = True,
                 hyperdiffusion_hours: float | None = 2.0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64):
        super().__init__(device, dtype)
        self.nlat, self.nlon = check_positive_int(nlat, "nlat"), check_positive_int(nlon, "nlon")
        if self.nlat < 8 or self.nlon < self.nlat:
            raise ValueError(f"nlat, nlon must be >= 8 and nlon >= nlat, got {nlat}, {nlon}")
        self.dt_seconds = check_positive(dt_seconds, "dt_seconds")
        self.dt = self.dt_seconds / 3600.0
        self.lmax = math.ceil(self.nlat / 3) if lmax is None else check_positive_int(lmax, "lmax")
        self.bump_amplitude, self.random_longitude = float(bump_amplitude), bool(random_longitude)
        solver = _solver_class()(self.nlat, self.nlon, self.dt_seconds, lmax=self.lmax, mmax=self.lmax)
        self.s = solver.to(dtype=torch.float64).to(self.device)
        self.hyperdiffusion_hours = None if hyperdiffusion_hours is None else check_positive(hyperdiffusion_hours, "hyperdiffusion_hours")
        lap = self.s.lap
        rate = 0.0 if hyperdiffusion_hours is None else 1.0 / (3600.0 * self.hyperdiffusion_hours)
        self.hyper = torch.exp(-self.dt_seconds * rate * (lap / lap[-1, 0]) ** 4)
        self.area_w = (self.s.quad_weights * (2 * math.pi / self.nlon) * self.s.radius**2).to(self.dtype)
        with warnings.catch_warnings():  # torch-harmonics calls torch.meshgrid without indexing=
            warnings.simplefilter("ignore", UserWarning)
            self._galewsky = self.s.galewsky_initial_condition()
        self._base = self._balanced_jet(self._galewsky)

    def params(self) -> dict[str, Any]:
        return {"nlat": self.nlat, "nlon": self.nlon, "dt_seconds": self.dt_seconds, "lmax": self.lmax,
                "bump_amplitude": self.bump_amplitude, "random_longitude": self.random_longitude,
                "hyperdiffusion_hours": self.hyperdiffusion_hours}

    # -- dynamics --------------------------------------------------------------------------
    def _bump(self, lon0: float, amplitude) -> torch.Tensor:
        lats, lons = torch.meshgrid(self.s.lats, self.s.lons, indexing="ij")
        dlon = torch.remainder(lons - lon0 + math.pi, 2 * math.pi) - math.pi
        return amplitude * torch.cos(lats) * torch.exp(-((dlon * 3.0) ** 2)) * torch.exp(-((0.25 * math.pi - lats) ** 2) * 15.0)

    def _balanced_jet(self, spec: torch.Tensor) -> torch.Tensor:
        """The Galewsky jet's vorticity with the geopotential balancing it *on the truncated grid*.

        Galewsky et al. balance the analytic jet; at ``lmax = nlat / 3`` the truncated jet is then
        out of balance by O(1) (the torch-harmonics example drifts by hundreds of metres in 12 h
        without the bump). Solving ``lap(Phi + |u|^2/2) = k . curl((zeta + f) u)`` with the
        truncated ``u`` makes the bump-free jet steady to round-off and aliasing.
        """
        s = self.s
        spec = spec.clone()
        spec[2] = 0.0
        uv = self._uv(spec[None, 1:])[0]
        vort = s.spec2grid(spec[1])
        curl = self._vrtdiv((uv * (vort + s.coriolis))[None])[0, 0]
        ke = s.grid2spec(0.5 * (uv**2).sum(0))
        flat = torch.full((self.nlat, self.nlon), float(s.gravity * s.havg), dtype=torch.float64, device=self.device)
        spec[0] = s.invlap * curl - ke + s.grid2spec(flat)
        return torch.tril(spec)

    def _uv(self, vrtdiv: torch.Tensor) -> torch.Tensor:
        return self.s.ivsht(self.s.invlap * vrtdiv / self.s.radius)

    def _vrtdiv(self, vec: torch.Tensor) -> torch.Tensor:
        return self.s.lap * self.s.radius * self.s.vsht(vec)

    def tendency(self, spec: torch.Tensor) -> torch.Tensor:
        """Spectral ``d/dt (Phi, zeta, delta)`` for ``spec (B, 3, lmax, mmax)``."""
        s = self.s
        grid = s.isht(spec)
        uv = self._uv(spec[:, 1:])
        flux = self._vrtdiv(uv * (grid[:, 1:2] + s.coriolis))
        mass = self._vrtdiv(uv * grid[:, 0:1])
        energy = s.sht(grid[:, 0] + 0.5 * (uv**2).sum(1))
        return torch.stack([-mass[:, 1], -flux[:, 1], flux[:, 0] - s.lap * energy], dim=1)

    def step(self, x: torch.Tensor, n_steps: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        dt = self.dt_seconds
        for _ in range(int(n_steps)):
            k1 = self.tendency(x)
            k2 = self.tendency(x + 0.5 * dt * k1)
            k3 = self.tendency(x + 0.5 * dt * k2)
            k4 = self.tendency(x + dt * k3)
            x = x + (dt / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
            x = torch.cat([x[:, :1], self.hyper * x[:, 1:]], dim=1)
        return x

    def initial_state(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Galewsky jet plus its height bump (at a random longitude when ``random_longitude``)."""
        out = []
        for _ in range(n):
            lon0 = float(torch.rand(1, generator=generator, dtype=torch.float64)) * 2 * math.pi if self.random_longitude else math.pi
            spec = self._base.clone()
            spec[0] = spec[0] + self.s.grid2spec(self.s.gravity * self._bump(lon0, self.bump_amplitude))
            out.append(torch.tril(spec))
        return torch.stack(out)

    def perturb(self, x: torch.Tensor, generator: torch.Generator, scale: float) -> torch.Tensor:
        """Add a smooth random height field of rms ``scale`` metres (white noise truncated to l < lmax / 2)."""
        noise = torch.randn(x.shape[0], self.nlat, self.nlon, generator=generator, dtype=torch.float64).to(self.device)
        spec = self.s.grid2spec(noise) * (self.s.l < self.lmax // 2)
        h = self.s.spec2grid(spec)
        h = h / h.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()
        pert = torch.zeros_like(x)
        pert[:, 0] = self.s.grid2spec(self.s.gravity * scale * h)
        return x + pert

    # -- output and diagnostics ------------------------------------------------------------
    def fields(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        grid = self.s.isht(x)
        uv = self._uv(x[:, 1:])
        return {"h": grid[:, 0] / self.s.gravity, "u": uv[:, 0], "v": uv[:, 1], "vorticity": grid[:, 1],
                "divergence": grid[:, 2]}

    def invariants(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-member ``mass = int h dA`` (m^3) and ``energy = int (h |u|^2 + g h^2) / 2 dA`` (m^5 s^-2)."""
        f = self.fields(x)
        g = self.s.gravity
        mass = (f["h"] * self.area_w).sum((-2, -1))
        energy = (0.5 * (f["h"] * (f["u"] ** 2 + f["v"] ** 2) + g * f["h"] ** 2) * self.area_w).sum((-2, -1))
        return {"mass": mass, "energy": energy}

    def variables(self) -> dict[str, Variable]:
        d = ("lat", "lon")
        return {
            "h": Variable(d, {"long_name": "fluid layer thickness", "standard_name": "sea_surface_height_above_sea_floor", "units": "m"}),
            "u": Variable(d, {"long_name": "eastward velocity", "standard_name": "eastward_wind", "units": "m s-1"}),
            "v": Variable(d, {"long_name": "northward velocity", "standard_name": "northward_wind", "units": "m s-1"}),
            "vorticity": Variable(d, {"long_name": "relative vorticity", "standard_name": "atmosphere_relative_vorticity", "units": "s-1"}),
            "divergence": Variable(d, {"long_name": "horizontal divergence", "standard_name": "divergence_of_wind", "units": "s-1"}),
        }

    def coords(self) -> dict[str, Coordinate]:
        lat = np.degrees(self.s.lats.cpu().numpy())
        lon = np.degrees(self.s.lons.cpu().numpy())
        return {"lat": Coordinate(lat, {"long_name": "latitude", "standard_name": "latitude", "units": "degrees_north", "axis": "Y"}),
                "lon": Coordinate(lon, {"long_name": "longitude", "standard_name": "longitude", "units": "degrees_east", "axis": "X"})}
