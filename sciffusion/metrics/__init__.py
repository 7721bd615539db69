"""Verification of ensembles on gridded data.

Every metric takes ``(forecast, observation, *, member_dim="member", reduce_dims=None,
weights=None)``: xarray (eager or dask, DataArray or Dataset), numpy or torch in, the same type
out. ``reduce_dims=None`` keeps every dimension; ``"all"`` reduces all of them. For numpy and
torch inputs the member axis is ``member_dim`` if it is an int, else axis 0, and ``reduce_dims``
are integer axes of the observation. See ``docs/metrics.md``.
"""

from .crps import crps_ensemble, crps_gaussian
from .ensemble import bias, energy_score, rank_histogram, rmse, spread_skill_ratio
from .exchangeability import energy_distance, flatness, member_rank_histogram, spread_ratio
from .probability import brier_score, reliability
from .quantile import interval_score, interval_score_ensemble, quantile_score
from .spectra import band_power_ratio, radial_spectrum, zonal_spectrum
from .twcrps import twcrps_ensemble
from .uncertainty import block_bootstrap, diebold_mariano, skill_score
from .weights import latitude_weights

__all__ = [
    "band_power_ratio",
    "bias",
    "block_bootstrap",
    "brier_score",
    "crps_ensemble",
    "crps_gaussian",
    "diebold_mariano",
    "energy_distance",
    "energy_score",
    "flatness",
    "interval_score",
    "interval_score_ensemble",
    "latitude_weights",
    "member_rank_histogram",
    "quantile_score",
    "radial_spectrum",
    "rank_histogram",
    "reliability",
    "skill_score",
    "rmse",
    "spread_ratio",
    "spread_skill_ratio",
    "twcrps_ensemble",
    "zonal_spectrum",
]
