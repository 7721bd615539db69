"""Relaxation of the analysis spread back towards the forecast's: the adaptive alternatives to a
fixed multiplicative inflation that operational ensemble filters use.

- RTPS, relaxation to prior spread (Whitaker & Hamill 2012, MWR 140): per state entry ``i`` the
  analysis anomalies are scaled so that their spread becomes ``(1 - a) sd_a[i] + a sd_f[i]``.
  Where the observations cut the spread most it restores most; where they did nothing it does
  nothing (a multiplicative inflation inflates both alike).
- RTPP, relaxation to prior perturbations (Zhang et al. 2004, MWR 132): the analysis anomalies
  become ``(1 - a) A_a + a A_f``, member by member.

Both keep the analysis mean. ``a = 0`` is the identity, ``a = 1`` gives back the forecast's spread
(RTPS) or anomalies (RTPP).
"""

from __future__ import annotations

import torch


def check_coefficients(**coefficients) -> None:
    """ValueError naming the first coefficient (``rtps=``, ``rtpp=``) outside [0, 1]."""
    for name, a in coefficients.items():
        if not 0.0 <= float(a) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {a}")


def relax(forecast: torch.Tensor, analysis: torch.Tensor, *, rtps: float = 0.0, rtpp: float = 0.0) -> torch.Tensor:
    """The analysis ensemble ``(N, *state)`` with its anomalies relaxed towards the forecast's.

    Args:
        forecast: the forecast members ``(N, *state)`` the analysis started from.
        analysis: the analysis members ``(N, *state)``, member ``n`` the update of forecast member ``n``
            (RTPP pairs them; RTPS uses only the spreads).
        rtps: RTPS coefficient in [0, 1] (module docstring); applied after ``rtpp``.
        rtpp: RTPP coefficient in [0, 1].
    """
    check_coefficients(rtps=rtps, rtpp=rtpp)
    if forecast.shape != analysis.shape:
        raise ValueError(f"forecast {tuple(forecast.shape)} and analysis {tuple(analysis.shape)} ensembles "
                         "differ in shape")
    if forecast.shape[0] < 2:
        raise ValueError(f"relaxing the spread needs at least 2 members, got {forecast.shape[0]}")
    if not rtps and not rtpp:
        return analysis
    xf, xa = forecast.to(torch.float64), analysis.to(torch.float64)
    mean = xa.mean(0)
    anom_f, anom_a = xf - xf.mean(0), xa - mean
    if rtpp:
        anom_a = (1.0 - rtpp) * anom_a + rtpp * anom_f
    if rtps:
        sd_f, sd_a = anom_f.std(0), anom_a.std(0)
        factor = torch.where(sd_a > 0, ((1.0 - rtps) * sd_a + rtps * sd_f) / sd_a.clamp_min(1e-300), 1.0)
        anom_a = anom_a * factor
    return (mean + anom_a).to(analysis.dtype)
