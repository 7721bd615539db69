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
"""

from __future__ import annotations

import numpy as np
import scipy.fft

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
