"""Differentiable residual of the forced 2-D vorticity equation on the periodic square.

For a vorticity trajectory ``omega(t_k)`` sampled every ``dt`` on ``[0, 2 pi)^2``::

    R = d omega/dt + u . grad(omega) - nu lap(omega) + mu omega - F(y),
    u = (d psi/dy, -d psi/dx),  lap(psi) = -omega,  F(y) = -A k_f cos(k_f y),

the same equation and grid as :class:`sciffusion.systems.KolmogorovFlow`. Space derivatives
are spectral (the product de-aliased by the 2/3 rule, as in the solver); the time derivative
is the second-order central difference ``(omega_{k+1} - omega_{k-1}) / (2 dt)``, so the residual
of the solver's own output is ``O(dt^2)`` and falls four-fold when ``dt`` is halved.
"""

from __future__ import annotations

import math

import torch


def vorticity_tendency(
    w: torch.Tensor, *, reynolds: float, drag: float = 0.1, k_forcing: int = 4, amplitude: float = 1.0,
    dealias: bool = True,
) -> torch.Tensor:
    """``d omega/dt = -u . grad(omega) + nu lap(omega) - mu omega + F`` for ``w (..., N, N)`` on ``(y, x)``."""
    n = w.shape[-1]
    if w.shape[-2] != n or n % 2:
        raise ValueError(f"w must be on an even square (N, N) grid, got {tuple(w.shape[-2:])}")
    real = w.dtype
    kx = torch.fft.rfftfreq(n, 1.0 / n, dtype=real, device=w.device)[None, :]
    ky = torch.fft.fftfreq(n, 1.0 / n, dtype=real, device=w.device)[:, None]
    k2 = kx**2 + ky**2
    inv_k2 = torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, 1.0), 0.0)
    w_hat = torch.fft.rfft2(w)
    psi = w_hat * inv_k2
    u = torch.fft.irfft2(1j * ky * psi, s=(n, n))
    v = torch.fft.irfft2(-1j * kx * psi, s=(n, n))
    wx = torch.fft.irfft2(1j * kx * w_hat, s=(n, n))
    wy = torch.fft.irfft2(1j * ky * w_hat, s=(n, n))
    adv_hat = torch.fft.rfft2(u * wx + v * wy)
    if dealias:
        adv_hat = adv_hat * ((kx.abs() <= n // 3) & (ky.abs() <= n // 3))
    lap = torch.fft.irfft2(-k2 * w_hat, s=(n, n))
    y = torch.arange(n, dtype=real, device=w.device) * (2 * math.pi / n)
    forcing = (-amplitude * k_forcing * torch.cos(k_forcing * y))[:, None]
    return -torch.fft.irfft2(adv_hat, s=(n, n)) + lap / reynolds - drag * w + forcing


def vorticity_residual(
    w: torch.Tensor, dt: float, *, reynolds: float, drag: float = 0.1, k_forcing: int = 4,
    amplitude: float = 1.0, dealias: bool = True,
) -> torch.Tensor:
    """Residual ``(..., T-2, N, N)`` of a trajectory ``w (..., T, N, N)`` sampled every ``dt``."""
    if w.ndim < 3 or w.shape[-3] < 3:
        raise ValueError(f"w must be a trajectory (..., T, N, N) with T >= 3, got {tuple(w.shape)}")
    dwdt = (w[..., 2:, :, :] - w[..., :-2, :, :]) / (2 * dt)
    rhs = vorticity_tendency(w[..., 1:-1, :, :], reynolds=reynolds, drag=drag, k_forcing=k_forcing,
                             amplitude=amplitude, dealias=dealias)
    return dwdt - rhs
