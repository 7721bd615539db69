r"""Darcy flow on the unit square, in one place: ``-div(a grad u) = f``, ``u = 0`` on the boundary.

Grid: ``n x n`` nodes ``x_i = i h``, ``h = 1 / (n - 1)`` including the boundary nodes (the
FNO/DiffusionPDE layout; the default n=64 and n=128 grids). Discretisation: the conservative
five-point finite-difference (finite-volume) stencil with harmonic-mean face coefficients::

    a_{i+1/2,j} = 2 a_{i,j} a_{i+1,j} / (a_{i,j} + a_{i+1,j})
    r_{i,j} = -[a_{i+1/2,j}(u_{i+1,j} - u_{i,j}) - a_{i-1/2,j}(u_{i,j} - u_{i-1,j})
               + a_{i,j+1/2}(u_{i,j+1} - u_{i,j}) - a_{i,j-1/2}(u_{i,j} - u_{i,j-1})] / h^2 - f_{i,j}

at the ``(n-2)^2`` interior nodes, and ``r = u`` on the boundary (the Dirichlet condition).
Second order in ``h`` for smooth ``a``. This module owns that operator in every form: the sparse
matrix :func:`darcy_matrix`, the numpy solve :func:`solve_darcy` (SuperLU, used by ``DarcyFlow``),
the torch :func:`darcy_residual` (batched, any device, autograd), the differentiable :func:`darcy_solve`,
and on joint normalised ``(a, u)`` fields :class:`DarcyResidual` and :class:`DarcyProjection`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch


def _harmonic(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return 2.0 * p * q / (p + q)


def darcy_matrix(a: np.ndarray) -> sp.csr_matrix:
    """The interior stiffness matrix ``((n-2)^2, (n-2)^2)`` for one coefficient field ``a (n, n)``."""
    n = a.shape[-1]
    h2 = (1.0 / (n - 1)) ** 2
    m = n - 2
    ax = _harmonic(a[:, :-1], a[:, 1:]) / h2  # faces between (j, i) and (j, i+1): shape (n, n-1)
    ay = _harmonic(a[:-1, :], a[1:, :]) / h2  # faces between (j, i) and (j+1, i): shape (n-1, n)
    west, east = ax[1:-1, :-1], ax[1:-1, 1:]
    south, north = ay[:-1, 1:-1], ay[1:, 1:-1]
    idx = np.arange(m * m).reshape(m, m)
    rows = [idx.ravel()]
    cols = [idx.ravel()]
    vals = [(west + east + south + north).ravel()]
    for coef, di, dj in ((west, 0, -1), (east, 0, 1), (south, -1, 0), (north, 1, 0)):
        j0, j1 = max(0, -di), m - max(0, di)
        i0, i1 = max(0, -dj), m - max(0, dj)
        rows.append(idx[j0:j1, i0:i1].ravel())
        cols.append(idx[j0 + di : j1 + di, i0 + dj : i1 + dj].ravel())
        vals.append(-coef[j0:j1, i0:i1].ravel())
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(m * m, m * m))


def solve_darcy(a: np.ndarray, f: float | np.ndarray = 1.0) -> np.ndarray:
    """Solve ``-div(a grad u) = f``, ``u = 0`` on the boundary, for ``a`` of shape ``(n, n)`` or ``(B, n, n)``.

    ``f`` is a scalar or an array broadcastable to ``a``. Returns ``u`` with the shape of ``a``
    (boundary rows and columns zero).
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim not in (2, 3) or a.shape[-1] != a.shape[-2] or a.shape[-1] < 3:
        raise ValueError(f"a (coefficient) must have shape (n, n) or (B, n, n) with n >= 3, got {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError("a (coefficient) must be finite and strictly positive")
    batch = a[None] if a.ndim == 2 else a
    f_all = np.broadcast_to(np.asarray(f, dtype=np.float64), batch.shape)
    u = np.zeros_like(batch)
    for b in range(batch.shape[0]):
        rhs = f_all[b, 1:-1, 1:-1].ravel()
        u[b, 1:-1, 1:-1] = spla.spsolve(darcy_matrix(batch[b]).tocsc(), rhs).reshape(u.shape[-1] - 2, -1)
    return u[0] if a.ndim == 2 else u


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
    boundary = torch.ones(u.shape[-2:], dtype=u.dtype, device=u.device)
    boundary[1:-1, 1:-1] = 0
    return torch.nn.functional.pad(-div * inv_h2 - f_int, (1, 1, 1, 1)) + u * boundary


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

    The same discretisation as :func:`darcy_residual` and :func:`solve_darcy`
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


class DarcyResidual:
    r"""Darcy residual :math:`-\nabla\cdot(a\nabla u) - f` (with ``u = 0`` on the boundary) of a
    joint normalised field ``x: (B, 2, n, n)`` holding ``a`` and ``u`` in two channels.

    Args:
        mean, std: per-channel normalisation, ``physical = x * std + mean``.
        channels: indices of ``(a, u)``.
        f: forcing.
        a_min: lower clamp on ``a`` (the residual needs a positive coefficient).
    """

    def __init__(self, mean: Sequence[float] = (0.0, 0.0), std: Sequence[float] = (1.0, 1.0),
                 channels: Sequence[int] = (0, 1), f: float = 1.0, a_min: float = 1e-3):
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]
        self.channels, self.f, self.a_min = tuple(channels), float(f), float(a_min)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        ia, iu = self.channels
        a = x[:, ia] * self.std[0] + self.mean[0]
        u = x[:, iu] * self.std[1] + self.mean[1]
        return darcy_residual(a.clamp_min(self.a_min), u, self.f)


class DarcyProjection:
    r"""Map a joint normalised Darcy field ``x: (B, 2, n, n)`` holding ``(a, u)`` onto the PDE's
    solution manifold: ``a`` clamped to ``bounds``, ``u`` replaced by the solve of
    ``-div(a grad u) = f`` (:func:`darcy_solve`, the discretisation of
    :class:`sciffusion.systems.DarcyFlow`).

    Not a Euclidean projection (the set is a curved manifold), but idempotent, and a joint
    prior's solution channel is replaced by the exact solve of its coefficient channel. The map is
    differentiable (adjoint solve), so guidance computed *through* it
    (``sample(..., guidance="projected", guide_projected=True)``) sends observations of ``u``
    to ``a`` through the PDE rather than through the prior's learned correlations.

    Args:
        mean, std: per-channel normalisation, ``physical = x * std + mean``, in channel order ``(a, u)``.
        channels: indices of ``(a, u)`` in ``x``.
        bounds: ``(lower, upper)`` on the physical coefficient (positive; the thresholded
            coefficient of ``DarcyFlow`` is in ``[3, 12]``).
        f: forcing.
    """

    def __init__(self, mean=(0.0, 0.0), std=(1.0, 1.0), channels=(0, 1), bounds=(3.0, 12.0), f: float = 1.0):
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]
        if len(self.mean) != 2 or len(self.std) != 2 or min(self.std) <= 0:
            raise ValueError(f"mean and std must hold two values (a, u) with std > 0, got {mean} and {std}")
        lo, hi = (float(b) for b in bounds)
        if not 0 < lo <= hi:
            raise ValueError(f"bounds must satisfy 0 < lower <= upper for the coefficient, got {bounds}")
        self.channels, self.bounds, self.f = tuple(channels), (lo, hi), float(f)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        ia, iu = self.channels
        a = (x[:, ia] * self.std[0] + self.mean[0]).clamp(*self.bounds)
        u = darcy_solve(a, self.f)
        out = x.clone()
        out[:, ia] = (a - self.mean[0]) / self.std[0]
        out[:, iu] = (u - self.mean[1]) / self.std[1]
        return out

    def violation(self, x: torch.Tensor) -> torch.Tensor:
        """Largest distance of ``u`` (physical units) from the solve of the clamped ``a``, per sample."""
        ia, iu = self.channels
        u = x[:, iu] * self.std[1] + self.mean[1]
        return (self(x)[:, iu] * self.std[1] + self.mean[1] - u).abs().reshape(x.shape[0], -1).amax(1)
