r"""Poisson and Helmholtz on the unit square, in one place: ``lap(u) + k^2 u = a``, ``u = 0`` on the boundary.

``k = 0`` is the Poisson equation of DiffusionPDE (Huang et al. 2024), ``k = 1`` its Helmholtz
equation; note the sign, ``lap(u) = a`` (not ``-lap(u) = a``), as in their data generator and
PDE loss (``dataset_generation/static/generate_poisson.m``, ``generate_inhom_helmholtz.m``,
``scripts/generate_{poisson,helmholtz}.py`` of ``jhhuangchloe/DiffusionPDE``).

Grid: ``n x n`` nodes ``x_i = i h``, ``h = 1 / (n - 1)``, boundary nodes included (their layout,
as for Darcy). Discretisation: the five-point Laplacian at the ``m = n - 2`` interior nodes per
side, ``u = 0`` on the boundary::

    r_{i,j} = (u_{i+1,j} + u_{i-1,j} + u_{i,j+1} + u_{i,j-1} - 4 u_{i,j}) / h^2 + k^2 u_{i,j} - a_{i,j}

The operator is diagonal in the type-I discrete sine transform (DST-I) of the interior: mode
``(p, q)``, ``1 <= p, q <= m``, has the eigenvalue ``lambda_p + lambda_q + k^2`` with
``lambda_p = -(4 / h^2) sin^2(pi p / (2 (m + 1)))``, so a solve is two DSTs and a division
(exact to round-off; the DiffusionPDE data were solved with a sparse direct solve of the same
matrix). A resonant ``k`` (an eigenvalue within round-off of zero) is refused.

This module owns the operator in every form: the numpy solve :func:`solve_helmholtz`
(``scipy.fft.dstn``, float64, used by :class:`sciffusion.systems.Poisson` / ``Helmholtz``), the
torch :func:`helmholtz_residual` (batched, any device, autograd), the differentiable
:func:`helmholtz_solve` (DST-I as dense sine matrices, linear so autograd is exact), and on joint
normalised ``(a, u)`` fields :class:`HelmholtzResidual` and :class:`HelmholtzProjection`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.fft
import torch


def _check_grid(shape: Sequence[int], name: str) -> int:
    if len(shape) < 2 or shape[-1] != shape[-2] or shape[-1] < 3:
        raise ValueError(f"{name} must have shape (..., n, n) with n >= 3, got {tuple(shape)}")
    return int(shape[-1])


def _check_k(k) -> float:
    try:
        k = float(k)
    except (TypeError, ValueError):
        raise ValueError(f"k (wavenumber) must be a real number, got {k!r}") from None
    if not math.isfinite(k) or k < 0:
        raise ValueError(f"k (wavenumber) must be finite and >= 0, got {k}")
    return k


def helmholtz_eigenvalues(n: int, k: float = 0.0) -> np.ndarray:
    """``(m, m)`` eigenvalues ``lambda_p + lambda_q + k^2`` of the interior operator (``m = n - 2``),
    in DST-I mode order ``p, q = 1..m``; ValueError if one is within round-off of zero (resonance)."""
    m = n - 2
    h2 = (1.0 / (n - 1)) ** 2
    lam = -4.0 / h2 * np.sin(np.pi * np.arange(1, m + 1) / (2 * (m + 1))) ** 2
    k2 = _check_k(k) ** 2
    eig = lam[:, None] + lam[None, :] + k2
    if np.abs(eig).min() <= 1e-10 * (2 * np.abs(lam).max() + k2):
        raise ValueError(f"k={k} is resonant on an n={n} grid: the discrete Helmholtz operator is singular")
    return eig


def solve_helmholtz(a: np.ndarray, k: float = 0.0) -> np.ndarray:
    """Solve ``lap(u) + k^2 u = a``, ``u = 0`` on the boundary, for ``a`` of shape ``(n, n)`` or ``(B, n, n)``.

    float64 DST-I solve (``scipy.fft.dstn``); the boundary values of ``a`` are not used. Returns ``u``
    with the shape of ``a`` (boundary rows and columns zero).
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim not in (2, 3):
        raise ValueError(f"a (source) must have shape (n, n) or (B, n, n), got {a.shape}")
    n = _check_grid(a.shape, "a (source)")
    if not np.all(np.isfinite(a)):
        raise ValueError("a (source) must be finite")
    eig = helmholtz_eigenvalues(n, k)
    spec = scipy.fft.dstn(a[..., 1:-1, 1:-1], type=1, axes=(-2, -1)) / eig
    u = np.zeros_like(a)
    u[..., 1:-1, 1:-1] = scipy.fft.idstn(spec, type=1, axes=(-2, -1))
    return u


def helmholtz_residual(a: torch.Tensor, u: torch.Tensor, k: float = 0.0) -> torch.Tensor:
    """Residual ``(..., n, n)`` of ``lap(u) + k^2 u = a`` with ``u = 0`` on the boundary.

    Args:
        a: source ``(..., n, n)`` (its boundary values are not used).
        u: solution ``(..., n, n)``.
        k: wavenumber (0: Poisson).

    Returns the five-point residual at interior nodes and ``u`` itself on the boundary (the
    Dirichlet condition), as :func:`sciffusion.physics.darcy_residual` does.
    """
    if a.shape[-2:] != u.shape[-2:]:
        raise ValueError(f"a and u must share the (n, n) grid, got {tuple(a.shape)} and {tuple(u.shape)}")
    n = _check_grid(u.shape, "u")
    k2 = _check_k(k) ** 2
    inv_h2 = float(n - 1) ** 2
    c = u[..., 1:-1, 1:-1]
    lap = (u[..., 2:, 1:-1] + u[..., :-2, 1:-1] + u[..., 1:-1, 2:] + u[..., 1:-1, :-2] - 4 * c) * inv_h2
    interior = lap + k2 * c - a[..., 1:-1, 1:-1]
    mask = torch.ones(u.shape[-2:], dtype=u.dtype, device=u.device)
    mask[1:-1, 1:-1] = 0
    return torch.nn.functional.pad(interior, (1, 1, 1, 1)) + u * mask


def _sine_matrix(m: int, dtype: torch.dtype, device) -> torch.Tensor:
    j = torch.arange(1, m + 1, dtype=torch.float64)
    return torch.sin(math.pi * j[:, None] * j[None, :] / (m + 1)).to(dtype=dtype, device=device)


def helmholtz_solve(a: torch.Tensor, k: float = 0.0) -> torch.Tensor:
    """Differentiable solve of ``lap(u) + k^2 u = a``, ``u = 0`` on the boundary: ``u (..., n, n)``.

    The same discretisation as :func:`helmholtz_residual` and :func:`solve_helmholtz`, in the
    dtype and on the device of ``a`` (batched over leading dims). The DST-I is applied as the
    dense sine matrix ``S_{pj} = sin(pi p j / (m + 1))`` (``S^2 = (m + 1) / 2 I``), so the map
    ``a -> u`` is linear and its autograd gradient is exact (the adjoint solve: the operator is
    symmetric). Cost ``O(n^3)`` per field, about 16 MFLOP at n = 128.
    """
    n = _check_grid(a.shape, "a (source)")
    m = n - 2
    s = _sine_matrix(m, a.dtype, a.device)
    eig = torch.as_tensor(helmholtz_eigenvalues(n, k), dtype=a.dtype, device=a.device)
    spec = s @ a[..., 1:-1, 1:-1] @ s / eig
    interior = s @ spec @ s * (2.0 / (m + 1)) ** 2
    return torch.nn.functional.pad(interior, (1, 1, 1, 1))


def _physical(x: torch.Tensor, channels, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    ia, iu = channels
    return x[:, ia] * std[0] + mean[0], x[:, iu] * std[1] + mean[1]


def _check_normalisation(mean, std) -> tuple[list[float], list[float]]:
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != 2 or len(std) != 2 or min(std) <= 0:
        raise ValueError(f"mean and std must hold two values (a, u) with std > 0, got {mean} and {std}")
    return mean, std


class HelmholtzResidual:
    r"""Residual :math:`\nabla^2 u + k^2 u - a` (with ``u = 0`` on the boundary) of a joint
    normalised field ``x: (B, 2, n, n)`` holding ``a`` and ``u``: the callable that
    :class:`sciffusion.inverse.ResidualGuidance` takes (like :class:`~sciffusion.physics.DarcyResidual`).

    Args:
        mean, std: per-channel normalisation, ``physical = x * std + mean``, in the order ``(a, u)``.
        channels: indices of ``(a, u)`` in ``x``.
        k: wavenumber (0: Poisson, 1: DiffusionPDE's Helmholtz).
    """

    def __init__(self, mean: Sequence[float] = (0.0, 0.0), std: Sequence[float] = (1.0, 1.0),
                 channels: Sequence[int] = (0, 1), k: float = 0.0):
        self.mean, self.std = _check_normalisation(mean, std)
        self.channels, self.k = tuple(channels), _check_k(k)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a, u = _physical(x, self.channels, self.mean, self.std)
        return helmholtz_residual(a, u, self.k)


class HelmholtzProjection:
    r"""Map a joint normalised field ``x: (B, 2, n, n)`` holding ``(a, u)`` onto the solution set:
    ``u`` replaced by :func:`helmholtz_solve` of ``a`` (an affine map, so this is idempotent and
    differentiable; ``a`` is kept). Use it as :class:`~sciffusion.physics.DarcyProjection` is used.

    Args:
        mean, std, channels, k: as :class:`HelmholtzResidual`.
    """

    def __init__(self, mean=(0.0, 0.0), std=(1.0, 1.0), channels=(0, 1), k: float = 0.0):
        self.mean, self.std = _check_normalisation(mean, std)
        self.channels, self.k = tuple(channels), _check_k(k)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = _physical(x, self.channels, self.mean, self.std)
        out = x.clone()
        out[:, self.channels[1]] = (helmholtz_solve(a, self.k) - self.mean[1]) / self.std[1]
        return out

    def violation(self, x: torch.Tensor) -> torch.Tensor:
        """Largest distance of ``u`` (physical units) from the solve of ``a``, per sample."""
        iu = self.channels[1]
        return ((self(x)[:, iu] - x[:, iu]) * self.std[1]).abs().reshape(x.shape[0], -1).amax(1)
