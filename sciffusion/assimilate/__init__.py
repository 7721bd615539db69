"""Data assimilation with diffusion priors: cycled filtering with a training-free ensemble prior.

``cycle(forecast, ensemble, operator, observations, noise_std=...)`` alternates a forecast step
(any callable on ``(N, *state)`` ensembles: a :mod:`sciffusion.systems` model, an emulator) with
an analysis by a posterior sampler of :mod:`sciffusion.inverse` whose prior is the exact denoiser
of the forecast ensemble (:func:`ensemble_prior`). See ``docs/assimilation.md``.
"""

from sciffusion.assimilate.analysis import analysis, ensemble_prior, gaspari_cohn
from sciffusion.assimilate.cycle import FilterResult, check_inputs, cycle

__all__ = ["FilterResult", "analysis", "check_inputs", "cycle", "ensemble_prior", "gaspari_cohn"]
