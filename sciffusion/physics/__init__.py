"""PDE residual operators shared by training and sampling (differentiable torch).

Each operator uses the grid and boundary conditions of the matching solver in
:mod:`sciffusion.systems`, so the residual of the solver's own output is at discretisation
level (round-off for Darcy, ``O(dt^2)`` for the vorticity equation, round-off for the
spectral divergence of a streamfunction velocity, second order for the lat-lon divergence
of the shallow-water winds, round-off for the Poisson/Helmholtz DST solve and the Navier-Stokes
flow map).
"""

from sciffusion.physics.darcy import DarcyProjection, DarcyResidual, darcy_matrix, darcy_residual, darcy_solve, solve_darcy
from sciffusion.physics.navier_stokes import NavierStokesProjection, NavierStokesResidual
from sciffusion.physics.poisson import (HelmholtzProjection, HelmholtzResidual, helmholtz_residual, helmholtz_solve,
                                        solve_helmholtz)
from sciffusion.physics.divergence import divergence, sphere_divergence
from sciffusion.physics.vorticity import vorticity_residual, vorticity_tendency

__all__ = ["DarcyProjection", "DarcyResidual", "darcy_matrix", "darcy_residual", "darcy_solve", "divergence",
           "solve_darcy", "sphere_divergence", "vorticity_residual", "vorticity_tendency",
           "HelmholtzProjection", "HelmholtzResidual", "NavierStokesProjection", "NavierStokesResidual",
           "helmholtz_residual", "helmholtz_solve", "solve_helmholtz"]
