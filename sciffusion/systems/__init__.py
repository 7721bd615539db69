"""Built-in reference physics that write xarray (see ``docs/systems.md``).

- :class:`Lorenz96` (one or two levels) and :func:`lorenz96_forecast_model` (model error),
- :class:`Lorenz96TwoScale` (K=8, J=32, F=20 truth) and :class:`StochasticLorenz96`, its one-scale
  forecast model with a fitted cubic closure and AR(1) noise (:func:`fit_closure`),
- :class:`KolmogorovFlow`: 2-D forced Navier-Stokes, pseudo-spectral, ETDRK4, and
  :class:`StochasticKolmogorovFlow`, an imperfect forecast model with AR(1) stochastic forcing,
- :class:`DarcyFlow`: GRF coefficients and sparse finite-difference solves (:func:`solve_darcy`,
  from :mod:`sciffusion.physics.darcy`, which owns the discretisation),
- :class:`Poisson`, :class:`Helmholtz` (DST solves, :mod:`sciffusion.physics.poisson`) and
  :class:`NavierStokes` (``w0 -> w(T)`` pairs of :class:`NavierStokesFlow` on the unit torus): the
  DiffusionPDE task suite beside ``DarcyFlow``, with its 3 % observation tasks
  (:func:`observation_points`, :func:`observe`),
- :class:`ShallowWater`: shallow water on the sphere (needs ``torch-harmonics``, imported lazily),
- :func:`advected_grf`: an advected periodic Gaussian random field with an exact conditional law
  (the toy data set of the examples and tests),
- :func:`simulate`: truth runs and perturbed ensembles of any of them, in memory or streamed
  to zarr with resume.
"""

from sciffusion.systems.base import System, member_generator
from sciffusion.systems.darcy import DarcyFlow, solve_darcy
from sciffusion.systems.ensemble import simulate
from sciffusion.systems.grf import advected_grf, darcy_coefficient, gaussian_random_field
from sciffusion.systems.kolmogorov import KolmogorovFlow
from sciffusion.systems.kolmogorov_stochastic import StochasticKolmogorovFlow
from sciffusion.systems.lorenz96 import Lorenz96, leading_lyapunov_exponent, lorenz96_forecast_model
from sciffusion.systems.navier_stokes import NavierStokes, NavierStokesFlow, torus_grf
from sciffusion.systems.poisson import Helmholtz, Poisson, observation_points, observe
from sciffusion.systems.lorenz96_two_scale import Lorenz96TwoScale, StochasticLorenz96, fit_closure
from sciffusion.systems.shallow_water import ShallowWater

SYSTEMS = {"lorenz96": Lorenz96, "kolmogorov": KolmogorovFlow, "darcy": DarcyFlow, "shallow-water": ShallowWater,
           "poisson": Poisson, "helmholtz": Helmholtz, "navier-stokes": NavierStokes}

__all__ = [
    "SYSTEMS", "DarcyFlow", "KolmogorovFlow", "Lorenz96", "Lorenz96TwoScale", "ShallowWater", "StochasticLorenz96",
    "System", "advected_grf", "darcy_coefficient",
    "fit_closure", "gaussian_random_field", "leading_lyapunov_exponent", "lorenz96_forecast_model", "member_generator",
    "simulate", "solve_darcy",
    "Helmholtz", "NavierStokes", "NavierStokesFlow", "Poisson", "StochasticKolmogorovFlow", "observation_points", "observe", "torus_grf",
]
