"""Spread calibration: pick the sampler setting that makes the spread-skill ratio 1 on validation data.

Two searches, one measure. :func:`calibrate_spread` (an :class:`~sciffusion.emulators.EnsembleEmulator`)
tunes one knob: the noise temperature (default), the EDM churn (``method="stochastic"``) or the
number of sampler steps (Merizzi et al. 2025 tie DDIM's ensemble variance to the step count).
:class:`SamplerCalibration` (the :class:`~sciffusion.emulators.Downscaler`'s ``variance_curve`` and
``calibrate``) tabulates a grid of DDIM ``(steps, eta)`` and EDM-stochastic ``(steps, s_noise)``
settings, each at every noise temperature asked for, and picks a row by :func:`choose_setting`. The ratio is always
:func:`sciffusion.metrics.spread_skill_ratio` (``sqrt((M+1)/M)`` corrected, so its target is 1
whatever the ensemble size), pooled over all points and variables (each variable scaled by its
climatological std). Calibrating against the truth makes the ensemble reliable for the truth;
against a held-out physics member it makes the emulated spread match the physics ensemble's.
"""

from __future__ import annotations

import warnings

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

import sciffusion.metrics as sm

KNOBS = ("temperature", "churn", "steps")
CRITERIA = ("ssr", "ssr+spectrum", "ssr|spectrum")
STOCHASTIC_CHURN = 40.0  # EDM's S_churn; with <= 96 steps it is capped at gamma = sqrt(2) - 1 per step
DEFAULT_VALUES = {"temperature": (0.6, 0.8, 1.0, 1.25, 1.6), "churn": (0.0, 5.0, 10.0, 20.0, 40.0),
                  "steps": (4, 6, 8, 12, 18)}


def check_temperature(value, name: str = "temperature") -> float:
    """``value`` as a float, or TypeError (not a number) / ValueError (not > 0) naming ``name``: a
    noise temperature scales the sampler's starting draw, so it must be positive."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number > 0, got {value!r}") from None
    if not t > 0:
        raise ValueError(f"{name} must be > 0 (it scales the sampler's starting noise), got {value!r}")
    return t


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
               member_dim: str = "member", weights: xr.DataArray | None = None) -> float:
    """Spread-skill ratio pooled over the variables of ``ensemble`` (each divided by ``scale[v]``),
    averaging over points with ``weights`` (a DataArray over grid dims) when given."""
    spread2 = skill2 = 0.0
    kw = {} if weights is None else {"weights": weights}
    for v in ensemble.data_vars:
        s = (scale or {}).get(str(v), 1.0)
        comp = sm.spread_skill_ratio(ensemble[v].astype(np.float64) / s, observation[v].astype(np.float64) / s,
                                     member_dim=member_dim, reduce_dims="all", components=True, **kw)
        spread2 += float(comp["spread"]) ** 2
        skill2 += float(comp["skill"]) ** 2
    return float(np.sqrt(spread2 / skill2))


def calibrate_spread(emulator, seeds: xr.Dataset, observation: xr.Dataset | xr.DataArray, *, knob: str = "temperature",
                     values=None, n_members: int = 16, target: float = 1.0, refine: bool = True, apply: bool = True,
                     seed: int = 0, weights=None, **generate_kwargs) -> Calibration:
    """Choose ``knob`` so that the ensemble generated from ``seeds`` has spread-skill ``target`` against ``observation``.

    Tries ``values`` (default :data:`DEFAULT_VALUES`), then (``refine``) interpolates linearly
    to where the ratio crosses ``target`` and tries that value; keeps the value whose ratio is
    closest. With ``apply`` the emulator's default sampler is set to it (saved by ``emulator.save``).

    Args:
        emulator: an :class:`~sciffusion.emulators.EnsembleEmulator`.
        seeds: validation seeds (as for ``generate``).
        observation: the verifying values on the seeds' sample and grid dims (no member dim):
            the truth, or a held-out physics member to match the physics ensemble's spread.
        weights: average the spread and the error over points with these weights: ``"cos"``/``"area"``
            (latitude weights of the observation), a DataArray over grid dims, or ``"emulator"``
            (the emulator's own loss weights, ``emulator.weights``). None (default): unweighted.
    """
    if knob not in KNOBS:
        raise ValueError(f"knob must be one of {KNOBS}, got {knob!r}")
    observation = emulator.coder.dataset(observation, "observation")
    values = sorted(DEFAULT_VALUES[knob] if values is None else values)
    extra = {"method": "stochastic"} if knob == "churn" else {}
    obs = observation[emulator.coder.variables]
    if isinstance(weights, str) and weights == "emulator":
        weights = emulator.weights
    if weights is not None:
        from sciffusion.emulators.weights import resolve

        weights = resolve(weights, obs, emulator.coder.grid_dims)

    def ssr_at(value) -> float:
        value = int(round(value)) if knob == "steps" else float(value)
        ens = emulator.generate(seeds, n_members, seed=seed, **{"progress": False, **generate_kwargs, **extra, knob: value})
        return pooled_ssr(ens, obs, emulator.coder.scale, emulator.coder.member_dim, weights)

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


class SamplerCalibration:
    """Spread control by a table of sampler settings (mixed into :class:`~sciffusion.emulators.Downscaler`,
    which supplies ``coder``, ``sampler`` and ``downscale``)."""

    calibration = None  # the table of the last calibrate()

    def variance_curve(self, coarse, fine=None, *, steps=(4, 8, 16, 32), etas=(0.0, 0.25, 0.5, 0.75, 1.0),
                       s_noises=(), temperatures=(1.0,), n_members: int = 8, seed: int = 0,
                       batch_size: int | None = None, device=None):
        """Ensemble variance (and, given ``fine``, spread, RMSE, spread-skill ratio, CRPS and the
        high-wavenumber power error) for every DDIM ``(steps, eta)`` and every EDM-stochastic
        ``(steps, s_noise)``, each at every noise temperature of ``temperatures`` (the starting draw
        scaled by it; 1 is the plain sampler): a :class:`pandas.DataFrame`, one row per setting.

        Columns: ``method, steps, eta, s_noise, variance`` (mean ensemble variance over valid points),
        and with ``fine``: ``spread`` (sqrt of the (M+1)/M-corrected variance), ``rmse`` (of the
        ensemble mean), ``ssr = spread / rmse``, ``crps``, and ``high_k_error`` (the members' power
        over the truth's in the top half of wavenumbers, minus 1: :func:`sciffusion.metrics.band_power_ratio`;
        NaN where the grid has missing points), and last ``temperature``. With one variable these are
        in its units; with several, each variable is first divided by its training standard deviation.
        """
        import pandas as pd

        from sciffusion.emulators.downscale_data import stack

        c = self.coder
        temperatures = [check_temperature(t, "every value of temperatures") for t in temperatures]
        truth = None
        if fine is not None:
            fine = c.dataset(fine, "fine validation data")
            truth = stack(fine, c.variables, c.sample_dim, c.grid_dims)
        settings = [{"method": "ddim", "steps": int(s), "eta": float(e), "s_noise": float("nan")}
                    for s in steps for e in etas]
        settings += [{"method": "stochastic", "steps": int(s), "eta": float("nan"), "s_noise": float(sn)}
                     for s in steps for sn in s_noises]
        rows = []
        for row in settings:
            kw = {"eta": row["eta"]} if row["method"] == "ddim" else {"s_noise": row["s_noise"]}
            for t in temperatures:
                ens = self.downscale(coarse, n_members, steps=row["steps"], method=row["method"], seed=seed,
                                     batch_size=batch_size, device=device, progress=False, temperature=t, **kw)
                y = np.stack([ens[v].values for v in c.variables], axis=2)  # (N, M, C, H, W)
                rows.append({**row, **_scores(y, truth, c), "temperature": t})
        return pd.DataFrame(rows)

    def calibrate(self, coarse_val, fine_val, *, steps=(4, 8, 16, 32), etas=(0.0, 0.25, 0.5, 0.75, 1.0),
                  s_noises=(), temperatures=(1.0,), criterion: str = "ssr", n_members: int = 8, target: float = 1.0,
                  spectrum_tol: float = 0.1, apply: bool = True, seed: int = 0, batch_size: int | None = None,
                  device=None):
        """Choose the sampler setting that is best calibrated on validation data.

        Runs :meth:`variance_curve` with the truth ``fine_val`` over DDIM ``(steps, eta)`` and, when
        ``s_noises`` are given, EDM-stochastic ``(steps, s_noise)``, each at every noise temperature of
        ``temperatures`` (default 1 only, the plain sampler; above 1 widens the ensemble, which is how a
        distilled student, whose steps are fixed and whose eta only narrows it, is widened), and picks the
        row minimising
        ``|ssr - target|`` (``criterion="ssr"``), ``|ssr - target| + |high_k_error|``
        (``criterion="ssr+spectrum"``: spread and small-scale power both right), or ``|ssr - target|``
        among the rows whose ``|high_k_error| <= spectrum_tol`` (``criterion="ssr|spectrum"``: the
        spectrum as a constraint; the ``ssr+spectrum`` row when none meets it), see
        :func:`choose_setting`. With ``apply`` the chosen setting becomes the default sampler
        (``self.sampler``, stored by ``save``; a distilled student's noise levels stay). ``target`` need
        not be 1: a student matches its teacher with ``target=`` the teacher's validation spread-skill.
        Returns the table (also kept as ``self.calibration``), the chosen row flagged in ``chosen``.
        """
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}; got {criterion!r}")
        self._check_student_rows(steps, s_noises)
        table = self.variance_curve(coarse_val, fine_val, steps=steps, etas=etas, s_noises=s_noises,
                                    temperatures=temperatures, n_members=n_members, seed=seed, batch_size=batch_size,
                                    device=device)
        best = choose_setting(table, criterion, target=target, spectrum_tol=spectrum_tol)
        table["chosen"] = table.index == best
        if apply:
            self.apply_setting(table.loc[best])
        self.calibration = table
        return table

    def apply_setting(self, row) -> dict:
        """Make a calibration-table row (``method``, ``steps``, ``eta`` or ``s_noise``, and ``temperature``,
        1 when the row has none) the default sampler; a distilled student's noise levels
        (:meth:`~sciffusion.emulators.base.Emulator.with_student`) stay."""
        sampler = {"method": str(row["method"]), "steps": int(row["steps"])}
        self._check_student_rows([sampler["steps"]], [] if sampler["method"] == "ddim" else [row["s_noise"]])
        if sampler["method"] == "ddim":
            sampler["eta"] = float(row["eta"])
        else:
            sampler.update(s_noise=float(row["s_noise"]), churn=STOCHASTIC_CHURN)
        temperature = check_temperature(row.get("temperature", 1.0))
        if temperature != 1.0:  # the plain sampler's dict stays as it was before the knob existed
            sampler["temperature"] = temperature
        levels = (self.sampler or {}).get("sigmas")
        if levels is not None:
            sampler["sigmas"] = list(levels)
        self.sampler = sampler
        return sampler

    def _check_student_rows(self, steps, s_noises) -> None:
        """A student samples on its own ``calls + 1`` noise levels with DDIM: refuse other step counts
        and EDM-stochastic rows (they would sample on levels it was not distilled for), and any row for
        a learned-schedule student (its levels belong to DPM-Solver++(2M))."""
        levels = (self.sampler or {}).get("sigmas")
        if levels is None:
            return
        calls = len(levels) - 1
        if self.sampler.get("method") == "dpmpp2m":
            raise ValueError(f"this emulator samples with a learned-schedule student (distill method='schedule'): "
                             f"DPM-Solver++(2M) on its own {calls}-call noise levels; calibrate's rows are DDIM or "
                             "EDM-stochastic, which would sample on levels learned for another solver")
        if any(int(k) != calls for k in steps) or len(s_noises):
            raise ValueError(f"this emulator samples with a distilled student on its own {calls}-call noise levels: "
                             f"calibrate it with steps=({calls},) and DDIM etas only (no s_noises), got steps="
                             f"{tuple(int(k) for k in steps)}, s_noises={tuple(s_noises)}")


def choose_setting(table, criterion: str = "ssr", *, target: float = 1.0, spectrum_tol: float = 0.1) -> int:
    """Index of the calibration row ``criterion`` picks (columns ``ssr`` and ``high_k_error``).

    ``"ssr"``: least ``|ssr - target|``; ``"ssr+spectrum"``: least ``|ssr - target| + |high_k_error|``;
    ``"ssr|spectrum"``: least ``|ssr - target|`` among rows with ``|high_k_error| <= spectrum_tol``,
    falling back to ``"ssr+spectrum"`` when no row meets the tolerance."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}; got {criterion!r}")
    miss = (table["ssr"] - target).abs()
    if criterion == "ssr":
        return int(miss.idxmin())
    if table["high_k_error"].isna().all():
        raise ValueError(f"criterion={criterion!r} needs complete validation fields (the high-wavenumber "
                         "power is undefined on a grid with missing points); use criterion='ssr'")
    if criterion == "ssr|spectrum":
        ok = table["high_k_error"].abs() <= spectrum_tol
        if bool(ok.any()):
            return int(miss[ok].idxmin())
    return int((miss + table["high_k_error"].abs()).idxmin())


def _scores(y: np.ndarray, truth: np.ndarray | None, c) -> dict[str, float]:
    """Scores of ensembles ``y (N, M, C, H, W)`` against ``truth (N, C, H, W)``, pooled over valid
    points and variables (each divided by the coder's ``scale`` when there are several): spread,
    RMSE and their ratio by :func:`sciffusion.metrics.spread_skill_ratio`, CRPS by
    :func:`sciffusion.metrics.crps_ensemble`, and :func:`sciffusion.metrics.band_power_ratio` - 1."""
    scale = np.array([1.0 if c.channels == 1 else c.scale[v] for v in c.variables])[None, None, :, None, None]
    y = y.astype(np.float64) / scale
    m = y.shape[1]
    out = {"variance": float(np.nanmean(y.var(axis=1, ddof=1))) if m > 1 else 0.0}
    if truth is None:
        return out
    t = truth / scale[:, 0]
    ssr = sm.spread_skill_ratio(y, t, member_dim=1, reduce_dims="all", components=True)
    spread, rmse = float(ssr["spread"]), float(ssr["skill"])
    out.update(spread=spread, rmse=rmse, ssr=spread / rmse if rmse > 0 else float("nan"),
               crps=float(np.nanmean(sm.crps_ensemble(y, t, member_dim=1))))
    complete = np.isfinite(t).all() and np.isfinite(y).all() and min(t.shape[-2:]) >= 4
    out["high_k_error"] = sm.band_power_ratio(y, t) - 1.0 if complete else float("nan")
    return out

