r"""Poisson and Helmholtz (source ``a``, solution ``u``) pairs of the DiffusionPDE task suite, and the
sparse-observation tasks shared by the suite (:func:`observation_points`, :func:`observe`).

What DiffusionPDE (Huang et al. 2024, ``jhhuangchloe/DiffusionPDE``) generates, read from its code
(``dataset_generation/static/generate_poisson.m``, ``generate_inhom_helmholtz.m``; checked here):

- **Poisson**: ``lap(u) = a`` on ``[0, 1]^2``, ``u = 0`` on the boundary, five-point stencil with
  ``h = 1 / (S - 1)`` on an ``S x S = 128 x 128`` node grid, ``a = GRF(alpha=2, tau=3)`` (``GRF.m``,
  the FNO Darcy recipe, :func:`sciffusion.systems.gaussian_random_field`), boundary values of ``a``
  kept in the data (they do not enter the solve).
- **Helmholtz**: ``lap(u) + k^2 u = a`` with ``k = 1`` (the script's default; its sampling script's
  PDE loss is ``d2u + u - a``), same grid and GRF, boundary values of ``a`` set to zero.
- **Tasks** (``scripts/generate_{poisson,helmholtz}.py``): *forward* observes ``a`` at 500 random
  nodes (``np.random.seed(1); np.random.choice(128**2, 500, replace=False)``) and recovers ``u``;
  *inverse* observes ``u`` at 500 nodes (seed 0) and recovers ``a``. 500 / 128^2 = 3.05 %.
  Observations are noiseless there.

Not verified:

- that the ``GRF.m`` they call is FNO's (``neuraloperator/neuraloperator``
  ``data_generation/darcy/GRF.m``, read here; it is :func:`~sciffusion.systems.gaussian_random_field`).
  It is not in their repository as stored, whose ``GRF_zero.m`` is that function times a window;
- that the paper's text states ``k = 1`` (only the code was read);
- the noise level of FunDPS's (Yao et al. 2025) noisy-observation experiments, which was not found.
  FunDPS reuses these data sets (its README downloads "DiffusionPDE-normalized"). So ``noise`` in
  :func:`observe` is this package's convention (a fraction of the field's RMS), not a published one.

The solves are the exact DST-I solves of the same matrices (:mod:`sciffusion.physics.poisson`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from sciffusion.physics.poisson import helmholtz_eigenvalues, solve_helmholtz
from sciffusion.systems.base import check_positive, check_positive_int
from sciffusion.systems.grf import gaussian_random_field

#: DiffusionPDE's observed fraction: 500 of 128 x 128 nodes
OBSERVED_FRACTION = 500 / 128**2
#: the mask seeds of DiffusionPDE's sampling scripts, by observed channel
MASK_SEEDS = {"a": 1, "u": 0}
#: DiffusionPDE's task definitions: which channel is observed and which is recovered
TASKS = {"forward": ("a", "u"), "inverse": ("u", "a")}


def observation_points(n: int, channel: str = "u", num: int | None = None, seed: int | None = None) -> np.ndarray:
    """``(num, 2)`` observed ``(row, col)`` nodes of an ``n x n`` grid, DiffusionPDE's draw.

    ``num`` defaults to ``round(500 / 128^2 * n^2)`` (500 at n = 128, 125 at n = 64) and ``seed`` to
    DiffusionPDE's mask seed of ``channel`` (1 for ``a``, 0 for ``u``); the draw is numpy's legacy
    ``RandomState(seed).choice(n * n, num, replace=False)`` unravelled row-major, so at n = 128 the
    points are exactly those of DiffusionPDE's scripts. Pass them to
    ``sciffusion.inverse.SparseSensors(grid_shape, points=..., channels=[c])``.
    """
    n = check_positive_int(n, "n")
    if channel not in MASK_SEEDS:
        raise ValueError(f"channel must be one of {tuple(MASK_SEEDS)}, got {channel!r}")
    num = max(1, round(OBSERVED_FRACTION * n * n)) if num is None else check_positive_int(num, "num")
    if num > n * n:
        raise ValueError(f"num={num} exceeds the {n * n} grid nodes")
    seed = MASK_SEEDS[channel] if seed is None else int(seed)
    flat = np.random.RandomState(seed).choice(n * n, num, replace=False)
    return np.stack(np.unravel_index(flat, (n, n)), axis=1)


def observe(field: np.ndarray, points: np.ndarray, noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Observations ``y (B, num)`` of ``field (B, n, n)`` at ``points`` and their noise std ``(B,)``.

    ``noise = 0`` gives DiffusionPDE's noiseless task. ``noise > 0`` adds Gaussian noise of std
    ``noise * RMS(field_b)`` per sample ``b`` (RMS over the whole grid of the true field; a relative
    level, e.g. 0.01 for 1 %), drawn from ``numpy.random.default_rng([seed, b])``.
    """
    field = np.asarray(field, dtype=np.float64)
    if field.ndim != 3:
        raise ValueError(f"field must have shape (B, n, n), got {field.shape}")
    if noise < 0 or not np.isfinite(noise):
        raise ValueError(f"noise must be finite and >= 0, got {noise}")
    points = np.asarray(points)
    y = field[:, points[:, 0], points[:, 1]]
    std = float(noise) * np.sqrt((field**2).mean(axis=(1, 2)))
    if noise > 0:
        eps = np.stack([np.random.default_rng([int(seed), b]).standard_normal(y.shape[1]) for b in range(y.shape[0])])
        y = y + std[:, None] * eps
    return y, std


class PairSystem:
    """What the stationary ``(a, u)`` systems of the suite share: the node grid on ``[0, 1]^2``, the
    xarray output read by :func:`sciffusion.systems.simulate`, and the observation tasks.

    Subclasses set ``name``, ``n``, ``long_names`` (of ``a`` and ``u``) and implement ``sample``."""

    stationary = True
    long_names: dict[str, str] = {}
    periodic = False

    def grid(self) -> np.ndarray:
        """Node coordinates along one axis: ``i / (n - 1)`` (boundary nodes included), or
        ``i / n`` on the torus."""
        return np.arange(self.n) / (self.n if self.periodic else self.n - 1)

    def to_dataset(self, a: np.ndarray, u: np.ndarray, members: np.ndarray | None = None) -> xr.Dataset:
        """``a, u (member, y, x)`` with CF attributes; ``members`` are the sample ids."""
        members = np.arange(a.shape[0]) if members is None else members
        coords = {ax: xr.Variable(ax, self.grid(), {"long_name": ax, "units": "1", "axis": ax.upper()})
                  for ax in ("y", "x")}
        coords["member"] = xr.Variable("member", members, {"long_name": "sample (member) id"})
        data = {key: (("member", "y", "x"), value, {"long_name": self.long_names[key], "units": "1"})
                for key, value in (("a", a), ("u", u))}
        attrs = {"system": self.name, **{k: str(v) for k, v in self.params().items()}}
        return xr.Dataset(data, coords=coords, attrs=attrs)

    def observation_task(self, a: np.ndarray, u: np.ndarray, task: str = "forward", noise: float = 0.0,
                         seed: int = 0) -> dict[str, Any]:
        """DiffusionPDE's sparse task on pairs ``a, u (B, n, n)``: *forward* observes ``a`` and asks for ``u``,
        *inverse* observes ``u`` and asks for ``a``.

        Returns ``{"observed": "a"|"u", "target": ..., "points": (num, 2), "y": (B, num),
        "noise_std": (B,), "truth": (B, n, n)}`` (points and noise as :func:`observation_points`
        and :func:`observe`; ``truth`` is the field to recover).
        """
        if task not in TASKS:
            raise ValueError(f"task must be one of {tuple(TASKS)}, got {task!r}")
        observed, target = TASKS[task]
        fields = {"a": np.asarray(a), "u": np.asarray(u)}
        points = observation_points(self.n, observed)
        y, std = observe(fields[observed], points, noise, seed)
        return {"observed": observed, "target": target, "points": points, "y": y, "noise_std": std,
                "truth": fields[target]}


class Poisson(PairSystem):
    """DiffusionPDE's Poisson pairs: ``a = GRF(alpha, tau)``, ``u`` solves ``lap(u) = a``, ``u = 0`` on the boundary.

    Args:
        n: nodes per side (boundary included; DiffusionPDE: 128).
        alpha, tau: GRF parameters (:func:`~sciffusion.systems.gaussian_random_field`).

    Sample ``i`` is seeded by ``(seed, i)`` whatever the number of samples.
    """

    name = "poisson"
    long_names = {"a": "source of lap(u) = a", "u": "solution of lap(u) = a, u = 0 on the boundary"}
    zero_boundary_source = False

    def __init__(self, n: int = 128, alpha: float = 2.0, tau: float = 3.0):
        self.n = check_positive_int(n, "n")
        if self.n < 3:
            raise ValueError(f"n (grid size) must be >= 3, got {n}")
        self.alpha, self.tau = check_positive(alpha, "alpha"), check_positive(tau, "tau")
        self.k = 0.0

    def params(self) -> dict[str, Any]:
        return {"n": self.n, "alpha": self.alpha, "tau": self.tau, "k": self.k}

    def source(self, n_samples: int, seed: int = 0, start: int = 0) -> np.ndarray:
        """``a (n_samples, n, n)``: GRF draws, boundary zeroed for Helmholtz (as DiffusionPDE's data)."""
        a = gaussian_random_field(self.n, n_samples, alpha=self.alpha, tau=self.tau, seed=seed, start=start)
        if self.zero_boundary_source:
            a[:, [0, -1], :] = 0.0
            a[:, :, [0, -1]] = 0.0
        return a

    def sample(self, n_samples: int, seed: int = 0, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(a, u)``, each ``(n_samples, n, n)`` float64, members ``start .. start + n_samples - 1``."""
        a = self.source(n_samples, seed, start)
        return a, solve_helmholtz(a, self.k)


class Helmholtz(Poisson):
    """DiffusionPDE's Helmholtz pairs: ``a = GRF(alpha, tau)`` with zero boundary values, ``u`` solves
    ``lap(u) + k^2 u = a``, ``u = 0`` on the boundary (DiffusionPDE: ``k = 1``).

    Args:
        n, alpha, tau: as :class:`Poisson`.
        k: wavenumber (>= 0; a value that makes the discrete operator singular is refused).
    """

    name = "helmholtz"
    long_names = {"a": "source of lap(u) + k^2 u = a", "u": "solution of lap(u) + k^2 u = a, u = 0 on the boundary"}
    zero_boundary_source = True

    def __init__(self, n: int = 128, k: float = 1.0, alpha: float = 2.0, tau: float = 3.0):
        super().__init__(n, alpha, tau)
        helmholtz_eigenvalues(self.n, k)  # ValueError for a negative, non-finite or resonant k
        self.k = float(k)
