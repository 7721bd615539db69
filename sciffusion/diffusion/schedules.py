"""Noise levels for the variance-exploding (EDM) convention ``x = x0 + sigma * eps``."""

from __future__ import annotations

import torch

SIGMA_MAX = 80.0
"""The default largest noise level: EDM's (Karras et al. 2022), well above the scale of fields
normalised to unit variance, so the sampler's start ``sigma_max * z`` has forgotten the data."""


def karras_sigmas(
    steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = SIGMA_MAX,
    rho: float = 7.0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""The EDM noise levels of Karras et al. (2022, eq. 5), with a final zero appended.

    .. math::
        \sigma_i = \Big(\sigma_{max}^{1/\rho} + \tfrac{i}{N-1}
        (\sigma_{min}^{1/\rho} - \sigma_{max}^{1/\rho})\Big)^\rho,\quad i = 0..N-1,
        \qquad \sigma_N = 0.

    Args:
        steps: number of noise levels N before the final zero (N >= 1).
        sigma_min, sigma_max: the smallest and largest non-zero levels.
        rho: curvature; 7 spends more steps at low noise (EDM's choice).

    Returns:
        Tensor of shape ``(steps + 1,)``, decreasing, ending in 0.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if rho <= 0:
        raise ValueError(f"rho must be positive, got {rho}")
    ramp = torch.zeros(1, dtype=torch.float64) if steps == 1 else torch.linspace(0, 1, int(steps), dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(dtype=dtype, device=device)
