"""Divergence of a 2-D velocity field on the periodic square, differentiable.

``div u = du/dx + dv/dy`` on an ``(N_y, N_x)`` grid of ``[0, L_y) x [0, L_x)`` (default
``2 pi``, the Kolmogorov-flow grid). ``method="spectral"`` differentiates in Fourier space
(exact for band-limited fields, so a streamfunction velocity has divergence at round-off);
``method="central"`` uses second-order central differences ``(u_{i+1} - u_{i-1}) / (2 dx)``.
"""

from __future__ import annotations

import math

import torch


def divergence(
    u: torch.Tensor, v: torch.Tensor, *, length: tuple[float, float] = (2 * math.pi, 2 * math.pi),
    method: str = "spectral",
) -> torch.Tensor:
    """``du/dx + dv/dy`` for ``u, v (..., N_y, N_x)`` (x along the last axis)."""
    if u.shape != v.shape:
        raise ValueError(f"u and v must have the same shape, got {tuple(u.shape)} and {tuple(v.shape)}")
    ny, nx = u.shape[-2:]
    ly, lx = length
    if method == "spectral":
        kx = torch.fft.fftfreq(nx, lx / nx / (2 * math.pi), dtype=u.dtype, device=u.device)
        ky = torch.fft.fftfreq(ny, ly / ny / (2 * math.pi), dtype=u.dtype, device=u.device)
        du = torch.fft.ifft(1j * kx * torch.fft.fft(u, dim=-1), dim=-1).real
        dv = torch.fft.ifft(1j * ky[:, None] * torch.fft.fft(v, dim=-2), dim=-2).real
        return du + dv
    if method == "central":
        du = (torch.roll(u, -1, -1) - torch.roll(u, 1, -1)) / (2 * lx / nx)
        dv = (torch.roll(v, -1, -2) - torch.roll(v, 1, -2)) / (2 * ly / ny)
        return du + dv
    raise ValueError(f"method must be 'spectral' or 'central', got {method!r}")


def sphere_divergence(
    u: torch.Tensor, v: torch.Tensor, lat: torch.Tensor, *, radius: float = 6.37122e6
) -> torch.Tensor:
    """Horizontal divergence on a regular lat-lon grid of the sphere, second-order centred.

    ``div = [du/dlambda + d(v cos(phi))/dphi] / (a cos(phi))`` for ``u, v (..., n_lat, n_lon)``
    (eastward, northward; longitudes equally spaced over the full circle, periodic) and ``lat``
    in degrees (ascending or descending, equally spaced, e.g. the shallow-water output grid with
    its pole rows). Returns ``(..., n_lat - 2, n_lon)``: the rows between the first and last
    latitude, where the centred difference is defined.
    """
    if u.shape != v.shape or u.shape[-2] != len(lat):
        raise ValueError(f"u, v must be (..., len(lat), n_lon), got {tuple(u.shape)}, {tuple(v.shape)}, {len(lat)} latitudes")
    phi = torch.deg2rad(torch.as_tensor(lat, dtype=u.dtype, device=u.device))
    nlon = u.shape[-1]
    dlam = 2 * math.pi / nlon
    cos = torch.cos(phi)[:, None]
    du = (torch.roll(u, -1, -1) - torch.roll(u, 1, -1))[..., 1:-1, :] / (2 * dlam)
    vc = v * cos
    dv = (vc[..., 2:, :] - vc[..., :-2, :]) / (phi[2:] - phi[:-2])[:, None]
    return (du + dv) / (radius * cos[1:-1])
