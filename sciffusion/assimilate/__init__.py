"""Data assimilation with diffusion priors: cycled filtering with a training-free ensemble prior.

``cycle(forecast, ensemble, operator, observations, noise_std=...)`` alternates a forecast step
(any callable on ``(N, *state)`` ensembles: a :mod:`sciffusion.systems` model, an emulator) with
an analysis by a posterior sampler of :mod:`sciffusion.inverse` whose prior is the exact denoiser
of the forecast ensemble (:func:`ensemble_prior`). :func:`assimilate` runs it on xarray with a
:mod:`sciffusion.systems` model, resumable to zarr; :func:`cycle_scores` scores each cycle;
:func:`local_analysis` is the domain-localised (LETKF-style) analysis for large states.
See ``docs/assimilation.md``.
"""

from sciffusion.assimilate.analysis import analysis, ensemble_prior, gaspari_cohn, ring_taper
from sciffusion.assimilate.cycle import FilterResult, check_inputs, cycle
from sciffusion.assimilate.forecast_prior import (ForecastDenoiser, ForecastPrior, forecast_pairs,
                                                 forecast_prior_analysis, train_forecast_prior)
from sciffusion.assimilate.local import (Domains, LocalPrior, local_analysis, periodic_domains, periodic_domains_2d,
                                        random_rotation)
from sciffusion.assimilate.relax import relax
from sciffusion.assimilate.run import assimilate, truth_and_observations
from sciffusion.assimilate.scores import cycle_scores, plot_cycle_scores, summary
from sciffusion.assimilate.smoother import TrajectoryDenoiser, TrajectoryOperator, smooth
from sciffusion.assimilate.window_prior import WindowDenoiser, WindowPrior, train_window_prior

__all__ = ["Domains", "FilterResult", "ForecastDenoiser", "ForecastPrior", "LocalPrior", "TrajectoryDenoiser",
           "TrajectoryOperator", "WindowDenoiser", "WindowPrior", "analysis", "assimilate", "check_inputs", "cycle",
           "cycle_scores", "ensemble_prior", "forecast_pairs", "forecast_prior_analysis", "gaspari_cohn", "ring_taper",
           "local_analysis", "periodic_domains", "periodic_domains_2d", "plot_cycle_scores", "random_rotation", "relax",
           "smooth", "summary",
           "train_forecast_prior", "train_window_prior", "truth_and_observations"]
