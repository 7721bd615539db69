"""Inverse problems with a diffusion prior: forward operators and posterior samplers.

``sample(denoiser, operator, y, noise_std=..., guidance=...)`` draws from ``p(x0 | y)`` for
``y = A(x0) + n`` with guidance methods ``"dps"``, ``"pigdm"``, ``"mmps"`` (guidance wrappers that work
with every sampler of :mod:`sciffusion.diffusion`), ``"smc"`` (twisted particle ensembles,
exact as the particles grow), ``"projected"`` (hard constraints) and ``"residual"`` (PDE
residual guidance). See ``docs/inverse.md``.
"""

from sciffusion.inverse.api import METHODS, data_scale, guide, sample
from sciffusion.inverse.guidance import DPS, MMPS, PiGDM, conjugate_gradient
from sciffusion.inverse.operators import (
    Coarsen,
    Compose,
    Function,
    Linear,
    Mask,
    Observation,
    Operator,
    SparseSensors,
    as_operator,
)
from sciffusion.inverse.projection import Box, FixedTotal, LinearEquality, NonNegative, ProjectedDenoiser, projected_step
from sciffusion.inverse.residual import ResidualGuidance
from sciffusion.inverse.smc import SMCResult, systematic_resample, twisted_smc
from sciffusion.physics.darcy import DarcyProjection, DarcyResidual  # the PDE wrappers live with their solves
from sciffusion.physics.navier_stokes import NavierStokesProjection, NavierStokesResidual
from sciffusion.physics.poisson import HelmholtzProjection, HelmholtzResidual

__all__ = [
    "METHODS", "DPS", "MMPS", "PiGDM", "Box", "Coarsen", "Compose", "DarcyProjection", "DarcyResidual", "FixedTotal",
    "Function", "Linear", "LinearEquality", "Mask", "NonNegative", "Observation", "Operator",
    "ProjectedDenoiser", "ResidualGuidance", "SMCResult", "SparseSensors", "as_operator",
    "conjugate_gradient", "data_scale", "guide", "projected_step", "sample", "systematic_resample",
    "twisted_smc", "HelmholtzProjection", "HelmholtzResidual", "NavierStokesProjection", "NavierStokesResidual",
]
