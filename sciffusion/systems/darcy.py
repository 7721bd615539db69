"""Darcy flow on the unit square as a reference system: GRF coefficients ``a`` and solutions ``u``.

The discretisation and the solves live in :mod:`sciffusion.physics.darcy` (one operator for the
simulator, the residual, the differentiable solve and the projection); :func:`solve_darcy` and
:func:`darcy_matrix` are imported here so ``sciffusion.systems.darcy.solve_darcy`` keeps working.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from sciffusion.physics.darcy import darcy_matrix, solve_darcy  # noqa: F401  (darcy_matrix: public here too)
from sciffusion.systems.base import check_positive_int
from sciffusion.systems.grf import COEFFICIENT_KINDS, darcy_coefficient
from sciffusion.systems.poisson import PairSystem


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

    observation_task = PairSystem.observation_task  # DiffusionPDE's sparse forward/inverse tasks, same nodes

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
