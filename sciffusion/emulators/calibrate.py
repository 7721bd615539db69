"""Spread calibration: pick the sampler knob that makes the spread-skill ratio 1 on validation data.

The knob is the noise temperature (default), the EDM churn (``method="stochastic"``) or the
number of sampler steps (Merizzi et al. 2025 tie DDIM's ensemble variance to the step count).
The ratio is measured with :func:`sciffusion.metrics.spread_skill_ratio` (``sqrt((M+1)/M)``
corrected, so its target is 1 whatever the ensemble size), pooled over all points and variables
(each variable scaled by its climatological std). Calibrating against the truth makes the
ensemble reliable for the truth; against a held-out physics member it makes the emulated
spread match the physics ensemble's.
"""

from __future__ import annotations

import warnings

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

import sciffusion.metrics as sm

KNOBS = ("temperature", "churn", "steps")
DEFAULT_VALUES = {"temperature": (0.6, 0.8, 1.0, 1.25, 1.6), "churn": (0.0, 5.0, 10.0, 20.0, 40.0),
                  "steps": (4, 6, 8, 12, 18)}


@dataclass
class Calibration:
    """Result of :func:`calibrate_spread`: the chosen ``value`` and the ratio at every value tried."""

    knob: str
    value: float
    ssr: float
    tried: dict = field(default_factory=dict)

    def __str__(self) -> str:
        rows = ", ".join(f"{k:g}: {v:.3f}" for k, v in sorted(self.tried.items()))
        return f"{self.knob} = {self.value:g} (spread-skill {self.ssr:.3f}; tried {rows})"


def pooled_ssr(ensemble: xr.Dataset, observation: xr.Dataset, scale: dict[str, float] | None = None,
               member_dim: str = "member") -> float:
    """Spread-skill ratio pooled over the variables of ``ensemble`` (each divided by ``scale[v]``)."""
    spread2 = skill2 = 0.0
    for v in ensemble.data_vars:
        s = (scale or {}).get(str(v), 1.0)
        comp = sm.spread_skill_ratio(ensemble[v].astype(np.float64) / s, observation[v].astype(np.float64) / s,
                                     member_dim=member_dim, reduce_dims="all", components=True)
        spread2 += float(comp["spread"]) ** 2
        skill2 += float(comp["skill"]) ** 2
    return float(np.sqrt(spread2 / skill2))


def calibrate_spread(emulator, seeds: xr.Dataset, observation: xr.Dataset | xr.DataArray, *, knob: str = "temperature",
                     values=None, n_members: int = 16, target: float = 1.0, refine: bool = True, apply: bool = True,
                     seed: int = 0, **generate_kwargs) -> Calibration:
    """Choose ``knob`` so that the ensemble generated from ``seeds`` has spread-skill ``target`` against ``observation``.

    Tries ``values`` (default :data:`DEFAULT_VALUES`), then (``refine``) interpolates linearly
    to where the ratio crosses ``target`` and tries that value; keeps the value whose ratio is
    closest. With ``apply`` the emulator's default sampler is set to it (saved by ``emulator.save``).

    Args:
        emulator: an :class:`~sciffusion.emulators.EnsembleEmulator`.
        seeds: validation seeds (as for ``generate``).
        observation: the verifying values on the seeds' sample and grid dims (no member dim):
            the truth, or a held-out physics member to match the physics ensemble's spread.
    """
    if knob not in KNOBS:
        raise ValueError(f"knob must be one of {KNOBS}, got {knob!r}")
    if isinstance(observation, xr.DataArray):
        observation = observation.to_dataset(name=emulator.coder.variables[0]) if observation.name is None else observation.to_dataset()
    missing = [v for v in emulator.coder.variables if v not in observation.data_vars]
    if missing:
        raise ValueError(f"the observation lacks variable(s) {missing}")
    values = sorted(DEFAULT_VALUES[knob] if values is None else values)
    extra = {"method": "stochastic"} if knob == "churn" else {}
    obs = observation[emulator.coder.variables]

    def ssr_at(value) -> float:
        value = int(round(value)) if knob == "steps" else float(value)
        ens = emulator.generate(seeds, n_members, seed=seed, **{**generate_kwargs, **extra, knob: value})
        return pooled_ssr(ens, obs, emulator.coder.scale, emulator.coder.member_dim)

    tried = {float(v): ssr_at(v) for v in values}
    if refine:
        xs, ys = np.array(list(tried)), np.array(list(tried.values()))
        cross = np.flatnonzero(np.diff(np.sign(ys - target)) != 0)
        if cross.size:
            i = int(cross[0])
            v = xs[i] + (target - ys[i]) * (xs[i + 1] - xs[i]) / (ys[i + 1] - ys[i])
            v = float(round(v)) if knob == "steps" else float(v)
            if v not in tried:
                tried[v] = ssr_at(v)
    best = min(tried, key=lambda v: abs(tried[v] - target))
    result = Calibration(knob, int(best) if knob == "steps" else best, tried[best], tried)
    ratios = np.array(list(tried.values()))
    if not (ratios.min() <= target <= ratios.max()):  # the grid never reached the target: say so
        warnings.warn(f"calibrate_spread: no {knob} in {sorted(tried)} reaches spread-skill {target:g} (ratios "
                      f"{ratios.min():.3f}..{ratios.max():.3f}); using {result.value:g} at the edge of the grid. "
                      f"Pass a wider values=", UserWarning, stacklevel=2)
    if apply:
        emulator.sampler[knob] = result.value
        emulator.sampler.update(extra)
    return result
