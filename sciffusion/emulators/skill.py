"""The skill table of the SEEDS comparison: one row per ensemble, the scores SEEDS reports.

For ensembles ``(..., member, ...)`` against a truth without ``member``, pooled over every
point (and per lead time):

* ``crps`` - CRPS of the ensemble as it is (empirical CDF, M members), ``crps_fair`` the
  ensemble-size-corrected one (Ferro 2014);
* ``rmse`` - RMSE of the ensemble mean; ``spread``; ``ssr`` - spread-skill ratio with the
  ``sqrt((M+1)/M)`` correction (1 for a reliable ensemble of any size);
* ``rank_flatness`` - Kolmogorov-Smirnov distance of the rank histogram from uniform:
  ``max_r |F_hist(r) - (r+1)/(M+1)|`` (0 = flat; comparable across ensemble sizes);
* ``tail_err_{k}sigma`` - absolute error of the forecast probability of a ``k``-sigma
  event, ``|y - mu| > k sd`` with the truth climatology ``mu, sd``: ``|mean_i p_i - mean_i 1[event_i]|``
  (SEEDS Fig. 4's tail probabilities), next to the observed frequency ``tail_freq_{k}sigma``.

With ``weights`` (``"cos"``/``"area"`` latitude weights, or a DataArray over grid dims such as an
emulator's ``weights``) every average over points is the weighted one, rank counts included.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

import sciffusion.metrics as sm

COLUMNS = ("crps", "rmse", "spread", "ssr", "rank_flatness", "tail_err_2sigma", "tail_err_3sigma")


def ensemble_skill(forecast: xr.DataArray, truth: xr.DataArray, *, clim_mean: float | xr.DataArray = 0.0,
                   clim_std: float | xr.DataArray = 1.0, member_dim: str = "member", lead_dim: str | None = "lead_time",
                   sigmas=(2, 3), weights=None) -> dict:
    """Scores of one ensemble (see the module docstring); ``per_lead`` repeats CRPS, RMSE and SSR per lead.

    ``weights``: None (every point counts the same), ``"cos"``/``"area"`` (latitude weights of the
    truth's ``lat``/``latitude`` coordinate) or a DataArray over grid dims of the truth."""
    from sciffusion.emulators.weights import resolve

    fc, obs = forecast.astype(np.float64), truth.astype(np.float64)
    w = None if weights is None else resolve(weights, obs)
    kw = {} if w is None else {"weights": w}  # unweighted: the calls exactly as before
    out = {"members": int(fc.sizes[member_dim]),
           "crps": float(sm.crps_ensemble(fc, obs, member_dim=member_dim, reduce_dims="all", **kw)),
           "crps_fair": float(sm.crps_ensemble(fc, obs, member_dim=member_dim, fair=True, reduce_dims="all", **kw))}
    comp = sm.spread_skill_ratio(fc, obs, member_dim=member_dim, reduce_dims="all", components=True, **kw)
    out.update(rmse=float(comp["skill"]), spread=float(comp["spread"]), ssr=float(comp["ratio"]))
    hist = sm.rank_histogram(fc, obs, member_dim=member_dim, reduce_dims="all", **kw)
    out["rank_flatness"] = float(sm.flatness(hist))
    out["rank_histogram"] = np.asarray(hist.values).tolist()
    for k in sigmas:
        p = (np.abs(fc - clim_mean) > k * clim_std).mean(member_dim)
        o = (np.abs(obs - clim_mean) > k * clim_std).astype(float)
        if w is not None:
            p, o = p.weighted(w).mean(), o.weighted(w).mean()
        out[f"tail_freq_{k}sigma"] = float(o.mean())
        out[f"tail_prob_{k}sigma"] = float(p.mean())
        out[f"tail_err_{k}sigma"] = abs(float(p.mean()) - float(o.mean()))
    if lead_dim and lead_dim in obs.dims:
        other = [d for d in obs.dims if d != lead_dim]
        crps = sm.crps_ensemble(fc, obs, member_dim=member_dim, reduce_dims=other, **kw)
        ssr = sm.spread_skill_ratio(fc, obs, member_dim=member_dim, reduce_dims=other, components=True, **kw)
        out["per_lead"] = {f"{float(t):g}": {"crps": float(crps.sel({lead_dim: t})), "rmse": float(ssr["skill"].sel({lead_dim: t})),
                                             "ssr": float(ssr["ratio"].sel({lead_dim: t}))} for t in obs[lead_dim].values}
    return out


def format_table(rows: Mapping[str, dict], columns=COLUMNS) -> str:
    """A plain-text table, one line per ensemble."""
    head = f"{'ensemble':28s} {'M':>4s} " + " ".join(f"{c.replace('tail_err_', 'tail ').replace('rank_', 'rank '):>13s}" for c in columns)
    lines = [f"{name:28s} {r.get('members', 0):4d} " + " ".join(f"{r[c]:13.4f}" for c in columns) for name, r in rows.items()]
    return "\n".join([head, "-" * len(head), *lines])


def format_per_lead(rows: Mapping[str, dict], score: str = "crps") -> str:
    """``score`` per lead time, one line per ensemble."""
    leads = list(next(iter(rows.values()))["per_lead"])
    lines = [f"{name:28s} " + " ".join(f"{r['per_lead'][t][score]:8.4f}" for t in leads) for name, r in rows.items()]
    return "\n".join([f"{score + ' by lead':28s} " + " ".join(f"{t:>8s}" for t in leads), *lines])
