r"""Observation plus PDE-residual guidance (DiffusionPDE, Huang et al. 2024).

DiffusionPDE samples a joint field (for Darcy, the coefficient ``a`` and the solution ``u``)
and after each step pushes ``x`` down the gradients of the observation misfit and of the PDE
residual of the clean estimate. As a wrapper denoiser (so any sampler works):

.. math::
    D_y(x, \sigma) = D_{DPS}(x, \sigma) - \zeta_{pde}\,\mathbb 1[\sigma \le \sigma_{pde}]\,
                   \frac{f}{\|\nabla_D f\|^2}\,\nabla_D f,\qquad f = \tfrac12\|\rho(D)\|^2

where :math:`D_{DPS}` is the :class:`~sciffusion.inverse.guidance.DPS` denoiser (likelihood
score of the observations with an effective variance, strength ``zeta_obs``; omitted without
observations) and :math:`\rho` a residual from :mod:`sciffusion.physics` of the Tweedie
estimate ``D``. The PDE term is a Polyak gradient step on the clean estimate (the step that
zeroes the linearised residual along its gradient), so it is invariant to the residual's scale
(Darcy's grows as ``1/h^2``) and bounded at every noise level; DiffusionPDE instead steps along
the gradient of the residual norm w.r.t. ``x`` through the network with a per-PDE tuned weight.
A sampler applies a fraction ``~ zeta_pde * ln(sigma/sigma')`` of that step per move from
``sigma`` to ``sigma'`` and the whole step at the last one (which returns ``D_y``), so the
strength does not grow with the step count. DiffusionPDE switches the PDE term on for the last
20 % of its steps; ``pde_sigma`` sets the equivalent noise level (default: always on).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sciffusion.diffusion.denoiser import broadcast_like
from sciffusion.inverse.guidance import _Guided
from sciffusion.inverse.operators import Observation
from sciffusion.physics.darcy import DarcyResidual  # noqa: F401  (re-exported; the residual lives with the solve)


class ResidualGuidance(_Guided):
    """Observation (optional) plus PDE-residual guidance.

    Args:
        denoiser: the prior denoiser.
        observation: an :class:`Observation` or None (residual only).
        residual: ``residual(x0: (B, *event)) -> (B, ...)``, differentiable, zero for a solution.
        zeta_obs: strength of the observation likelihood score (see DPS; 1 = the likelihood).
        zeta_pde: fraction of the Polyak step on the residual per unit of ``ln sigma``.
        pde_sigma: apply the PDE term only at noise levels ``sigma <= pde_sigma`` (None: always).
    """

    def __init__(self, denoiser, observation: Observation | None, residual: Callable, *, zeta_obs: float = 1.0,
                 zeta_pde: float = 1.0, pde_sigma: float | None = None):
        super().__init__(denoiser, observation)
        if not callable(residual):
            raise TypeError(f"residual must be a callable on the clean field, got {type(residual).__name__}")
        self.residual, self.zeta_obs, self.zeta_pde = residual, float(zeta_obs), float(zeta_pde)
        self.pde_sigma = None if pde_sigma is None else float(pde_sigma)
        if observation is not None:
            self._gram = observation.gram_diag()  # ones for a nonlinear operator

    def correction(self, x, d, sigma):
        corr = torch.zeros_like(d)
        if self.obs is not None and self.zeta_obs:
            corr = corr + self._point_score(x, d, sigma, self.zeta_obs, self._gram, retain_graph=True)
        if self.zeta_pde:
            on = torch.ones_like(sigma) if self.pde_sigma is None else (sigma <= self.pde_sigma).to(sigma.dtype)
            if bool(on.any()):
                corr = corr - self.zeta_pde * broadcast_like(on.to(d.dtype), d) * polyak_step(self.residual, d.detach())
        return corr


def polyak_step(residual, x0: torch.Tensor) -> torch.Tensor:
    """``f / |grad f|^2 * grad f`` for ``f = |residual(x0)|^2 / 2`` per sample (``x0 - step`` zeroes
    the residual's linearisation along its gradient)."""
    with torch.enable_grad():
        z = x0.detach().requires_grad_(True)
        rho = residual(z).reshape(z.shape[0], -1)
        f = 0.5 * (rho**2).sum(1)
        (g,) = torch.autograd.grad(f.sum(), z)
    g2 = (g**2).reshape(g.shape[0], -1).sum(1)
    scale = torch.where(g2 > 0, f.detach() / g2.clamp_min(1e-300), torch.zeros_like(g2))
    return broadcast_like(scale, g) * g
