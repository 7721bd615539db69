"""The small protocol every time-dependent reference system follows.

A system keeps its state as a tensor of shape ``(B, *state_shape)`` (B = members, batched),
advances it with a fixed internal step ``dt`` (in the system's own time unit) and says how its
state becomes named output fields with coordinates, units and CF attributes. The ensemble
driver (:func:`sciffusion.systems.ensemble.simulate`) only talks to systems through this
protocol, so a user-defined system that implements it gets truth runs, perturbed ensembles and
resumable zarr output for free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Variable:
    """An output variable: its spatial dims (after ``member``) and CF attributes."""

    dims: tuple[str, ...]
    attrs: dict[str, str]


@dataclass
class Coordinate:
    """A spatial coordinate: values and CF attributes."""

    values: np.ndarray
    attrs: dict[str, str] = field(default_factory=dict)


class System:
    """Base class of the time-dependent systems (Lorenz-96, Kolmogorov flow, shallow water).

    Subclasses set ``name``, ``dt`` (internal step, in ``time_units``), ``time_units`` and
    implement :meth:`initial_state`, :meth:`step`, :meth:`fields`, :meth:`variables` and
    :meth:`coords`. :meth:`perturb` defaults to additive Gaussian noise on the state.
    """

    name: str = "system"
    dt: float = 1.0
    time_units: str = "1"
    #: human-readable description of one unit of time (e.g. "1 model time unit = 5 days")
    time_note: str = ""

    def __init__(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64):
        self.device = torch.device(device)
        self.dtype = dtype

    # -- to implement ----------------------------------------------------------------------
    def initial_state(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Random initial states ``(n, *state_shape)`` (before any spin-up)."""
        raise NotImplementedError

    def step(self, x: torch.Tensor, n_steps: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """Advance ``x`` by ``n_steps`` internal steps of length ``dt``."""
        raise NotImplementedError

    def fields(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Output fields ``{name: (B, *spatial)}`` from a state."""
        raise NotImplementedError

    def variables(self) -> dict[str, Variable]:
        raise NotImplementedError

    def coords(self) -> dict[str, Coordinate]:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """Parameters that define the system (stored in attrs, checked on resume)."""
        return {}

    # -- defaults --------------------------------------------------------------------------
    def perturb(self, x: torch.Tensor, generator: torch.Generator, scale: float) -> torch.Tensor:
        """Additive Gaussian perturbation ``x + scale * N(0, I)`` of the state."""
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        return x + scale * noise

    def advance(self, x: torch.Tensor, n_steps: int, generator: torch.Generator | None = None,
                callback: Callable[[int], Any] | None = None) -> torch.Tensor:
        """``step(x, n_steps)`` in about 100 pieces, calling ``callback(steps)`` after each (the
        progress of a long spin-up). Equal to one :meth:`step` call, as the steps are the same."""
        for piece in pieces(n_steps):
            x = self.step(x, piece, generator=generator)
            if callback is not None:
                callback(piece)
        return x

    def integrate(self, x: torch.Tensor, n_out: int, every: int, generator: torch.Generator | None = None,
                  callback: Callable[[int], Any] | None = None) -> torch.Tensor:
        """Trajectory ``(B, n_out + 1, *state)`` sampled every ``every`` steps, initial state first;
        ``callback(k)`` is called after output ``k`` (1..n_out)."""
        out = [x]
        for k in range(1, n_out + 1):
            x = self.step(x, every, generator=generator)
            out.append(x)
            if callback is not None:
                callback(k)
        return torch.stack(out, dim=1)


def pieces(n_steps: int, n_pieces: int = 100) -> list[int]:
    """``n_steps`` cut into at most ``n_pieces`` nearly equal step counts (none for 0 steps)."""
    size = max(1, -(-int(n_steps) // n_pieces))
    return [min(size, n_steps - a) for a in range(0, int(n_steps), size)]


def steps_in(interval: float, dt: float, name: str, step: str = "system step") -> int:
    """How many steps ``dt`` make ``interval``; ValueError naming ``name`` unless a non-negative multiple."""
    n = float(interval) / dt
    if interval < 0 or abs(n - round(n)) > 1e-6 * max(1.0, n):
        raise ValueError(f"{name}={interval} must be a non-negative multiple of the {step} dt={dt}")
    return round(n)


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int, raising ``ValueError`` naming ``name`` if it is not >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_positive(value: Any, name: str) -> float:
    """Return ``value`` as a float, raising ``ValueError`` naming ``name`` if it is not > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return v


def member_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator for ``(seed, *keys)`` (e.g. init index, member id).

    Seeds are derived with :class:`numpy.random.SeedSequence`, so member ``m`` of init ``i``
    is the same draw whatever the ensemble size (the GenCast ``fold_in`` habit).
    """
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, dtype=np.uint32)
    g = torch.Generator(device="cpu")
    g.manual_seed((int(state[0]) << 32 | int(state[1])) & (2**63 - 1))
    return g
