r"""The Navier-Stokes task's PDE map on joint ``(w0, w(T))`` fields: residual and projection.

The pair ``a = w0``, ``u = w(T)`` of :class:`sciffusion.systems.NavierStokes` satisfies
``u = Phi_T(a)`` with ``Phi_T`` the solver's flow map (:meth:`sciffusion.systems.NavierStokesFlow.solve`,
pseudo-spectral ETDRK4, differentiable by autograd). The residual of a pair is therefore
``u - Phi_T(a)``: zero (round-off) on solver output, and its gradient reaches ``a`` through the
solver. (DiffusionPDE's own "PDE loss" for this task is ``d_x w + d_y w`` of the final field,
a proxy that the true solution does not zero.) The flow object is passed in, so this module
does not import :mod:`sciffusion.systems`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sciffusion.physics.poisson import _check_normalisation, _physical


class NavierStokesResidual:
    r"""``w(T) - Phi_T(w0)`` (physical units) of a joint normalised field ``x: (B, 2, n, n)`` holding
    ``(w0, w(T))``: the callable that :class:`sciffusion.inverse.ResidualGuidance` takes.

    Args:
        flow: an object with ``solve(w0: (B, n, n), time) -> (B, n, n)`` (a
            :class:`~sciffusion.systems.NavierStokesFlow`; its device and dtype are used for the solve).
        mean, std: per-channel normalisation, ``physical = x * std + mean``, in the order ``(w0, w(T))``.
        channels: indices of ``(w0, w(T))`` in ``x``.
        time: T.
    """

    def __init__(self, flow, mean: Sequence[float] = (0.0, 0.0), std: Sequence[float] = (1.0, 1.0),
                 channels: Sequence[int] = (0, 1), time: float = 1.0):
        if not callable(getattr(flow, "solve", None)):
            raise TypeError(f"flow must have a solve(w0, time) method, got {type(flow).__name__}")
        self.flow, self.time = flow, float(time)
        self.mean, self.std = _check_normalisation(mean, std)
        self.channels = tuple(channels)

    def solve(self, w0: torch.Tensor) -> torch.Tensor:
        """``Phi_T(w0)`` in the dtype and on the device of ``w0``."""
        return self.flow.solve(w0, self.time).to(w0.dtype).to(w0.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w0, wt = _physical(x, self.channels, self.mean, self.std)
        return wt - self.solve(w0)


class NavierStokesProjection(NavierStokesResidual):
    """Replace the ``w(T)`` channel of ``x: (B, 2, n, n)`` by ``Phi_T(w0)`` (idempotent, differentiable);
    arguments as :class:`NavierStokesResidual`."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w0, _ = _physical(x, self.channels, self.mean, self.std)
        out = x.clone()
        out[:, self.channels[1]] = (self.solve(w0) - self.mean[1]) / self.std[1]
        return out

    def violation(self, x: torch.Tensor) -> torch.Tensor:
        """Largest distance of ``w(T)`` (physical units) from ``Phi_T(w0)``, per sample."""
        return NavierStokesResidual.__call__(self, x).abs().reshape(x.shape[0], -1).amax(1)
