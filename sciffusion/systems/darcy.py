"""Darcy flow on the unit square: ``-div(a grad u) = f``, ``u = 0`` on the boundary.

Grid: ``n x n`` nodes ``x_i = i h``, ``h = 1 / (n - 1)`` including the boundary nodes (the
FNO/DiffusionPDE layout; the default n=64 and n=128 grids). Discretisation: the conservative
five-point finite-difference (finite-volume) stencil with harmonic-mean face coefficients::

    a_{i+1/2,j} = 2 a_{i,j} a_{i+1,j} / (a_{i,j} + a_{i+1,j})
    -[a_{i+1/2,j}(u_{i+1,j} - u_{i,j}) - a_{i-1/2,j}(u_{i,j} - u_{i-1,j})
      + a_{i,j+1/2}(u_{i,j+1} - u_{i,j}) - a_{i,j-1/2}(u_{i,j} - u_{i,j-1})] / h^2 = f_{i,j}

at the ``(n-2)^2`` interior nodes; the sparse SPD system is assembled with ``scipy.sparse``
and solved directly (SuperLU). Second order in ``h`` for smooth ``a``.
:func:`sciffusion.physics.darcy_residual` is the same operator in differentiable torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import xarray as xr

from sciffusion.systems.base import check_positive_int
from sciffusion.systems.grf import COEFFICIENT_KINDS, darcy_coefficient


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


class DarcyFlow:
    """Darcy (a, u) pairs: GRF coefficient ``a`` (thresholded or log-normal) and its solution ``u``.

    A stationary system: :func:`sciffusion.systems.simulate` writes it with dims
    ``(member, y, x)`` and variables ``a`` and ``u``; member ``m`` is the draw seeded by
    ``(seed, m)`` whatever the number of members.
    """

    name = "darcy"
    stationary = True

    def __init__(self, n: int = 64, kind: str = "threshold", alpha: float = 2.0, tau: float = 3.0,
                 values: tuple[float, float] = (12.0, 3.0), forcing: float = 1.0):
        self.n = check_positive_int(n, "n")
        if self.n < 3:
            raise ValueError(f"n (grid size) must be >= 3, got {n}")
        if kind not in COEFFICIENT_KINDS:
            raise ValueError(f"kind must be one of {COEFFICIENT_KINDS}, got {kind!r}")
        self.kind, self.alpha, self.tau = kind, float(alpha), float(tau)
        self.values, self.forcing = tuple(map(float, values)), float(forcing)

    def params(self) -> dict[str, Any]:
        return {"n": self.n, "kind": self.kind, "alpha": self.alpha, "tau": self.tau,
                "values": list(self.values), "forcing": self.forcing}

    def sample(self, n_samples: int, seed: int = 0, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(a, u)``, each ``(n_samples, n, n)``, members ``start .. start + n_samples - 1``."""
        a = darcy_coefficient(self.n, n_samples, kind=self.kind, alpha=self.alpha, tau=self.tau,
                              values=self.values, seed=seed, start=start)
        return a, solve_darcy(a, self.forcing)

    def coords(self) -> dict[str, tuple]:
        v = np.linspace(0.0, 1.0, self.n)
        return {"y": ("y", v, {"long_name": "y", "units": "1", "axis": "Y"}),
                "x": ("x", v.copy(), {"long_name": "x", "units": "1", "axis": "X"})}

    def to_dataset(self, a: np.ndarray, u: np.ndarray, members: np.ndarray | None = None) -> xr.Dataset:
        members = np.arange(a.shape[0]) if members is None else members
        coords = {k: xr.Variable(d, v, attrs) for k, (d, v, attrs) in self.coords().items()}
        coords["member"] = xr.Variable("member", members, {"long_name": "sample (member) id"})
        return xr.Dataset(
            {"a": (("member", "y", "x"), a, {"long_name": "permeability coefficient", "units": "1"}),
             "u": (("member", "y", "x"), u, {"long_name": "pressure solution of -div(a grad u) = f", "units": "1"})},
            coords=coords,
        )
