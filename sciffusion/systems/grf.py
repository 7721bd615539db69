"""Gaussian random fields on the unit square (the FNO / DiffusionPDE Darcy recipe).

The field is a cosine series (Neumann boundary conditions) with covariance
``(-lap + tau^2)^(-alpha)``, exactly as ``GRF.m`` of the FNO data generator (Li et al. 2021),
which DiffusionPDE (Huang et al. 2024) reuses with ``alpha = 2, tau = 3``::

    xi_{kl} ~ N(0, 1),
    L_{kl}  = n * tau^(alpha - 1) * (pi^2 (k^2 + l^2) + tau^2)^(-alpha / 2) * xi_{kl},  L_00 = 0,
    g       = IDCT2(L)    (orthonormal inverse DCT, MATLAB ``idct2``)

Coefficient variants for Darcy flow: ``"threshold"`` gives ``a = 12`` where ``g >= 0`` and
``a = 3`` where ``g < 0``; ``"lognormal"`` gives ``a = exp(g)``. Sample ``i`` is seeded from
``(seed, i)`` so it is the same draw whatever the number of samples.

:func:`advected_grf` (``sciffusion.demo.demo_dataset``): a periodic GRF advected with an exact
conditional law, the toy data set of the conditional-sampling examples and tests.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import torch
import xarray as xr

from sciffusion.systems.base import check_positive, check_positive_int

COEFFICIENT_KINDS = ("threshold", "lognormal")


def gaussian_random_field(
    n: int, n_samples: int = 1, *, alpha: float = 2.0, tau: float = 3.0, seed: int = 0, start: int = 0
) -> np.ndarray:
    """``(n_samples, n, n)`` GRF draws; sample ``i`` uses seed ``(seed, start + i)``."""
    n = check_positive_int(n, "n")
    n_samples = check_positive_int(n_samples, "n_samples")
    alpha, tau = check_positive(alpha, "alpha"), check_positive(tau, "tau")
    k1, k2 = np.meshgrid(np.arange(n), np.arange(n), indexing="xy")
    coef = tau ** (alpha - 1) * (np.pi**2 * (k1**2 + k2**2) + tau**2) ** (-alpha / 2)
    out = np.empty((n_samples, n, n))
    for i in range(n_samples):
        xi = np.random.default_rng([seed, start + i]).standard_normal((n, n))
        spec = n * coef * xi
        spec[0, 0] = 0.0
        out[i] = scipy.fft.idctn(spec, type=2, norm="ortho")
    return out


def darcy_coefficient(
    n: int,
    n_samples: int = 1,
    *,
    kind: str = "threshold",
    alpha: float = 2.0,
    tau: float = 3.0,
    values: tuple[float, float] = (12.0, 3.0),
    seed: int = 0,
    start: int = 0,
) -> np.ndarray:
    """Darcy permeability fields ``(n_samples, n, n)``: thresholded ``values`` or ``exp(GRF)``."""
    if kind not in COEFFICIENT_KINDS:
        raise ValueError(f"kind must be one of {COEFFICIENT_KINDS}, got {kind!r}")
    g = gaussian_random_field(n, n_samples, alpha=alpha, tau=tau, seed=seed, start=start)
    if kind == "threshold":
        hi, lo = values
        if hi <= 0 or lo <= 0:
            raise ValueError(f"values (coefficient levels) must be positive, got {values}")
        return np.where(g >= 0, hi, lo)
    return np.exp(g)


def periodic_grf(shape, n, *, length_scale=4.0, generator=None) -> torch.Tensor:
    """``n`` periodic Gaussian random fields on ``shape`` with unit variance per point and
    power spectrum ``(1 + (k l)^2)^-2`` (Matern-like, ``l`` in grid points)."""
    ky = torch.fft.fftfreq(shape[0]) * 2 * np.pi
    kx = torch.fft.fftfreq(shape[1]) * 2 * np.pi
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    amp = (1 + k2 * length_scale**2) ** -1.0
    amp = amp / amp.pow(2).sum().sqrt()
    white = torch.randn(n, *shape, generator=generator, dtype=torch.float64)
    return torch.fft.ifft2(torch.fft.fft2(white) * amp).real * np.sqrt(shape[0] * shape[1])


def advected_grf(n_time: int = 1500, size: int = 32, a: float = 0.9, shift: int = 1, seed: int = 0) -> xr.Dataset:
    """One trajectory of the advected-GRF process as an xarray Dataset ``u(time, y, x)``:
    ``u_t = a roll(u_{t-1}, shift, x) + sqrt(1 - a^2) xi_t`` with :func:`periodic_grf` innovations."""
    g = torch.Generator().manual_seed(seed)
    xi = periodic_grf((size, size), n_time, generator=g)
    u = torch.empty(n_time, size, size, dtype=torch.float64)
    u[0] = xi[0]
    for t in range(1, n_time):
        u[t] = a * torch.roll(u[t - 1], shift, dims=-1) + np.sqrt(1 - a**2) * xi[t]
    coords = {"time": np.arange(n_time, dtype=np.int64), "y": np.arange(size, dtype=np.float64),
              "x": np.arange(size, dtype=np.float64)}
    ds = xr.Dataset({"u": (("time", "y", "x"), u.numpy().astype(np.float32),
                           {"long_name": "advected random field", "units": "1"})}, coords=coords)
    ds["time"].attrs.update(long_name="time step", units="steps")
    ds.attrs.update(title="sciffusion demo: advected Gaussian random field", a=a, shift=shift, seed=seed,
                    conditional_std=float(np.sqrt(1 - a**2)))
    return ds
