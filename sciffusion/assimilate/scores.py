"""Per-cycle scores of an assimilation run and their figure, through :mod:`sciffusion.metrics`.

At each analysis time, over the state dims (DAPPER's ``rmse.a`` and ``rmv.a``):

- ``rmse``: RMSE of the ensemble mean, ``sqrt(mean_k (mean_i x_ik - x*_k)^2)``;
- ``spread``: ``sqrt(mean_k var_i(x_ik))`` (ddof=1), DAPPER's rmv;
- ``crps``: ensemble CRPS (:func:`~sciffusion.metrics.crps_ensemble`), mean over the state;
- ``spread_skill``: :func:`~sciffusion.metrics.spread_skill_ratio` with the finite-ensemble
  correction ``(M+1)/M`` (1 for a reliable ensemble of any size M);
- ``rank_histogram`` (dim ``rank``): counts of the truth's rank among the members, over every
  cycle and state point (:func:`~sciffusion.metrics.rank_histogram`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from sciffusion.metrics import crps_ensemble, rank_histogram, spread_skill_ratio


def cycle_scores(analysis: xr.DataArray, truth: xr.DataArray, *, member_dim: str = "member",
                 time_dim: str = "time") -> xr.Dataset:
    """Scores per ``time_dim`` of the ensemble ``analysis (time, member, *state)`` against ``truth
    (time, *state)`` (see the module docstring); NaN truth points are left out."""
    analysis, truth = analysis.load(), truth.load()
    state = [d for d in truth.dims if d != time_dim]
    parts = spread_skill_ratio(analysis, truth, member_dim=member_dim, reduce_dims=state, correction=False,
                               components=True)
    return xr.Dataset({
        "rmse": parts["skill"].assign_attrs(long_name="RMSE of the ensemble mean"),
        "spread": parts["spread"].assign_attrs(long_name="ensemble spread sqrt(mean variance) (rmv)"),
        "crps": crps_ensemble(analysis, truth, member_dim=member_dim, reduce_dims=state).assign_attrs(long_name="CRPS"),
        "spread_skill": spread_skill_ratio(analysis, truth, member_dim=member_dim, reduce_dims=state).assign_attrs(
            long_name="spread-skill ratio (finite-ensemble corrected)"),
        "rank_histogram": rank_histogram(analysis, truth, member_dim=member_dim, reduce_dims="all").assign_attrs(
            long_name="rank of the truth among the members, all cycles and points"),
    })


def summary(scores: xr.Dataset, burn: int = 0) -> dict[str, float]:
    """Means over the cycles after ``burn`` of each per-cycle score (DAPPER's time averages of
    ``rmse.a`` and ``rmv.a``)."""
    s = scores.isel(time=slice(burn, None))
    return {k: float(s[k].mean()) for k in ("rmse", "spread", "crps", "spread_skill")}


def plot_cycle_scores(scores: xr.Dataset | Mapping[str, xr.Dataset], *, title: str | None = None) -> Figure:
    """RMSE (solid) and spread (dashed) against time, and the rank histogram (relative frequency,
    the flat line 1/(M+1) of a reliable ensemble); ``scores`` one :func:`cycle_scores` Dataset or
    ``{label: Dataset}`` to compare runs on the same axes."""
    items = {"analysis": scores} if isinstance(scores, xr.Dataset) else dict(scores)
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    ax, bx = fig.subplots(1, 2, width_ratios=[2, 1])
    width = 0.9 / len(items)
    for i, (label, s) in enumerate(items.items()):
        color = f"C{i}"
        ax.plot(s["time"], s["rmse"], color=color, lw=1.2, label=f"{label} RMSE ({float(s['rmse'].mean()):.3g})")
        ax.plot(s["time"], s["spread"], color=color, lw=1, ls="--",
                label=f"{label} spread ({float(s['spread'].mean()):.3g})")
        counts = s["rank_histogram"].values.astype(float)
        ranks = np.arange(len(counts))
        bx.bar(ranks - 0.45 + width * (i + 0.5), counts / max(counts.sum(), 1.0), width=width, color=color, label=label)
        bx.axhline(1.0 / len(counts), color="k", ls=":", lw=1)
    ax.set(xlabel=f"time ({s['time'].attrs.get('units', '')})", ylabel="analysis error", yscale="log",
           title=title or "RMSE of the ensemble mean and spread per cycle")
    ax.legend(fontsize="small")
    bx.set(xlabel="rank of the truth", ylabel="relative frequency", title="rank histogram")
    bx.legend(fontsize="small")
    return fig
