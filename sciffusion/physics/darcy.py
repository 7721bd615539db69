"""Differentiable Darcy residual, the same operator as :mod:`sciffusion.systems.darcy`.

On ``n x n`` nodes of the unit square (``h = 1 / (n - 1)``, boundary nodes included)::

    r_{i,j} = -[a_{i+1/2,j}(u_{i+1,j} - u_{i,j}) - a_{i-1/2,j}(u_{i,j} - u_{i-1,j})
               + a_{i,j+1/2}(u_{i,j+1} - u_{i,j}) - a_{i,j-1/2}(u_{i,j} - u_{i,j-1})] / h^2 - f_{i,j}

at interior nodes with harmonic-mean faces ``a_{i+1/2,j} = 2 a_{i,j} a_{i+1,j} / (a_{i,j} + a_{i+1,j})``,
and ``r = u`` on the boundary (the Dirichlet condition ``u = 0``). Written with tensor slices,
so it works batched, on any device, and under autograd (residual guidance, PINN losses).
"""

from __future__ import annotations

import torch


def darcy_residual(a: torch.Tensor, u: torch.Tensor, f: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Residual ``(..., n, n)`` of ``-div(a grad u) = f`` with ``u = 0`` on the boundary.

    Args:
        a: coefficient ``(..., n, n)``, positive.
        u: solution ``(..., n, n)``.
        f: source, scalar or broadcastable to ``u``.

    Returns the interior equation residual at interior nodes and ``u`` itself on the boundary.
    """
    if a.shape[-2:] != u.shape[-2:] or a.shape[-1] != a.shape[-2] or a.shape[-1] < 3:
        raise ValueError(f"a and u must share a square (n, n) grid with n >= 3, got {tuple(a.shape)} and {tuple(u.shape)}")
    n = u.shape[-1]
    inv_h2 = float(n - 1) ** 2
    ax = 2 * a[..., :, :-1] * a[..., :, 1:] / (a[..., :, :-1] + a[..., :, 1:])
    ay = 2 * a[..., :-1, :] * a[..., 1:, :] / (a[..., :-1, :] + a[..., 1:, :])
    fx = ax * (u[..., :, 1:] - u[..., :, :-1])  # flux across x-faces, (..., n, n-1)
    fy = ay * (u[..., 1:, :] - u[..., :-1, :])  # flux across y-faces, (..., n-1, n)
    div = (fx[..., 1:-1, 1:] - fx[..., 1:-1, :-1]) + (fy[..., 1:, 1:-1] - fy[..., :-1, 1:-1])
    f_t = torch.as_tensor(f, dtype=u.dtype, device=u.device)
    f_int = f_t.expand(u.shape)[..., 1:-1, 1:-1] if f_t.ndim else f_t
    interior = -div * inv_h2 - f_int
    return torch.nn.functional.pad(interior, (1, 1, 1, 1)) + _boundary(u)


def _boundary(u: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(u.shape[-2:], dtype=u.dtype, device=u.device)
    mask[1:-1, 1:-1] = 0
    return u * mask
