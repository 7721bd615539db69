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


def _interior_solve(factors, rhs: torch.Tensor) -> torch.Tensor:
    """``K_b^{-1} rhs_b`` on the interior nodes for each factorised field ``b``: float64 ``(B, n, n)``,
    zero on the boundary; ``rhs`` is ``(B, n, n)`` on any device and dtype."""
    rhs = rhs.to("cpu", torch.float64)
    out = torch.zeros(rhs.shape, dtype=torch.float64)
    m = rhs.shape[-1] - 2
    for b, lu in enumerate(factors):
        out[b, 1:-1, 1:-1] = torch.from_numpy(lu.solve(rhs[b, 1:-1, 1:-1].contiguous().numpy().ravel()).reshape(m, m))
    return out


class _DarcySolve(torch.autograd.Function):
    """``u = K(a)^{-1} f`` with the adjoint gradient ``dL/da = -(d(K(a) u)/da)^T K^{-1} dL/du``."""

    @staticmethod
    def forward(ctx, a, f):
        import scipy.sparse.linalg as spla

        from sciffusion.systems.darcy import darcy_matrix

        a64 = a.detach().to("cpu", torch.float64).numpy()
        factors = [spla.splu(darcy_matrix(field).tocsc()) for field in a64]
        u = _interior_solve(factors, f)
        ctx.factors = factors
        ctx.save_for_backward(a, u)
        return u.to(a.dtype).to(a.device)

    @staticmethod
    def backward(ctx, grad_u):
        a, u = ctx.saved_tensors
        lam = _interior_solve(ctx.factors, grad_u.detach())  # K is symmetric: the adjoint solve reuses the factors
        with torch.enable_grad():
            a64 = a.detach().to("cpu", torch.float64).requires_grad_(True)
            interior = darcy_residual(a64, u, 0.0)  # K(a) u on the interior, u on the boundary (no a)
            (grad_a,) = torch.autograd.grad(interior, a64, grad_outputs=-lam)
        return grad_a.to(a.dtype).to(a.device), None


def darcy_solve(a: torch.Tensor, f: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Differentiable solve of ``-div(a grad u) = f``, ``u = 0`` on the boundary: ``u (..., n, n)``.

    The same discretisation as :func:`darcy_residual` and :func:`sciffusion.systems.darcy.solve_darcy`
    (so ``darcy_residual(a, darcy_solve(a))`` is round-off). Each field is factorised once with
    SuperLU in float64 on the CPU; the backward pass is the adjoint solve with those factors
    (``K`` is symmetric), so a gradient costs one extra triangular solve per field. Tensors on
    another device are solved on the CPU and returned where they were.

    Args:
        a: coefficient ``(..., n, n)``, finite and strictly positive.
        f: source, scalar or broadcastable to ``a`` (not differentiated).
    """
    if a.ndim < 2 or a.shape[-1] != a.shape[-2] or a.shape[-1] < 3:
        raise ValueError(f"a (coefficient) must have shape (..., n, n) with n >= 3, got {tuple(a.shape)}")
    detached = a.detach()
    if not bool(torch.isfinite(detached).all()) or bool((detached <= 0).any()):
        raise ValueError("a (coefficient) must be finite and strictly positive; clamp it first (e.g. a.clamp(3, 12))")
    lead = a.shape[:-2]
    flat = a.reshape(-1, *a.shape[-2:])
    f_flat = torch.as_tensor(f, dtype=torch.float64).detach().cpu().expand(a.shape).reshape(flat.shape)
    return _DarcySolve.apply(flat, f_flat).reshape(*lead, *a.shape[-2:])
