"""The pictures people look at when they verify an ensemble.

Each function takes the output of a :mod:`sciffusion.metrics` function and returns a
:class:`matplotlib.figure.Figure`. Figures are built without ``pyplot`` (no global state, no GUI
backend), so they work headless and in threads; save with ``fig.savefig("x.png")`` or show one
in a notebook by leaving it as the cell's value.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr
from matplotlib.figure import Figure


def _as_dataarray(x, name: str) -> xr.DataArray:
    if isinstance(x, xr.DataArray):
        return x
    if isinstance(x, xr.Dataset):
        raise TypeError(f"{name}: pass one variable (a DataArray), e.g. ds['t2m']")
    return xr.DataArray(np.asarray(x))


def _panels(items: Mapping, size=(4.5, 3.5)):
    n = max(1, len(items))
    fig = Figure(figsize=(size[0] * n, size[1]), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    return fig, axes


def rank_histogram(hist, *, title: str | None = None) -> Figure:
    """Bar chart of relative frequency per rank, with the flat line 1/(M+1) of a reliable ensemble.

    ``hist``: output of :func:`sciffusion.metrics.rank_histogram` (a ``rank`` dim; any other dims
    are summed), a 1-D array of counts, or a dict ``{label: histogram}`` for side-by-side panels.
    """
    items = hist if isinstance(hist, Mapping) else {title or "rank histogram": hist}
    fig, axes = _panels(items)
    for ax, (label, h) in zip(axes, items.items()):
        h = _as_dataarray(h, "rank histogram")
        rank_dim = "rank" if "rank" in h.dims else h.dims[-1]
        counts = h.sum([d for d in h.dims if d != rank_dim]).values.astype(float)
        freq = counts / counts.sum() if counts.sum() > 0 else counts
        ranks = np.arange(len(freq))
        ax.bar(ranks, freq, width=0.9, color="tab:blue")
        ax.axhline(1.0 / len(freq), color="k", ls="--", lw=1, label="uniform")
        ax.set(xlabel="rank of observation", ylabel="relative frequency", title=str(label))
        ax.legend(loc="upper right", fontsize="small")
    return fig


def reliability_diagram(rel, *, title: str | None = None) -> Figure:
    """Observed frequency against forecast probability, with the diagonal and the number of
    forecasts per bin (sharpness) as grey bars on a second axis.

    ``rel``: output of :func:`sciffusion.metrics.reliability` (Dataset with
    ``forecast_probability``, ``observed_frequency``, ``count`` along ``bin``), or a dict of them.
    """
    items = rel if isinstance(rel, Mapping) and "count" not in rel else {title or "reliability": rel}
    fig, axes = _panels(items, size=(4.5, 4.5))
    for ax, (label, r) in zip(axes, items.items()):
        r = xr.Dataset(dict(r)) if not isinstance(r, xr.Dataset) else r
        extra = [d for d in r["count"].dims if d != "bin"]
        count = r["count"].sum(extra)
        fp = (r["forecast_probability"] * r["count"]).sum(extra) / count.where(count > 0)
        of = (r["observed_frequency"] * r["count"]).sum(extra) / count.where(count > 0)
        ax.plot([0, 1], [0, 1], color="k", ls="--", lw=1, label="perfect")
        ax.plot(fp.values, of.values, "o-", color="tab:red", label="forecast")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="forecast probability", ylabel="observed frequency",
               title=str(label))
        ax.legend(loc="upper left", fontsize="small")
        twin = ax.twinx()
        if "bin_lower" in r.coords:
            lo, hi = r["bin_lower"].values, r["bin_upper"].values
        else:
            lo = np.arange(count.size) / count.size
            hi = lo + 1.0 / count.size
        twin.bar(lo, count.values, width=hi - lo, align="edge", color="grey", alpha=0.3)
        twin.set_ylabel("forecasts per bin")
    return fig


def spread_skill(spread, skill=None, *, lead_dim: str | None = None, title: str | None = None) -> Figure:
    """Ensemble spread and ensemble-mean RMSE against lead time (left) and their ratio (right).

    ``spread``: the Dataset from ``spread_skill_ratio(..., components=True)`` (variables
    ``spread``, ``skill``, ``ratio``) or a spread DataArray with ``skill`` given separately. The
    x axis is ``lead_dim`` (default: the only dimension).
    """
    if isinstance(spread, xr.Dataset):
        sp, sk = spread["spread"], spread["skill"]
    else:
        if skill is None:
            raise ValueError("pass skill=... or the components Dataset of spread_skill_ratio")
        sp, sk = _as_dataarray(spread, "spread"), _as_dataarray(skill, "skill")
    lead_dim = lead_dim or (sp.dims[0] if sp.ndim == 1 else None)
    if lead_dim is None or lead_dim not in sp.dims:
        raise ValueError(f"spread has dims {tuple(sp.dims)}; name the lead-time dim with lead_dim=")
    other = [d for d in sp.dims if d != lead_dim]
    sp, sk = sp.mean(other), sk.mean(other)
    lead = sp[lead_dim].values
    if np.issubdtype(np.asarray(lead).dtype, np.timedelta64):
        lead = lead / np.timedelta64(1, "h")
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    a1.plot(lead, sk.values, "o-", label="RMSE of ensemble mean")
    a1.plot(lead, sp.values, "s--", label="ensemble spread")
    a1.set(xlabel=str(lead_dim), ylabel="score", title=title or "spread and skill")
    a1.legend(fontsize="small")
    a2.plot(lead, (sp / sk).values, "o-", color="tab:purple")
    a2.axhline(1.0, color="k", ls="--", lw=1)
    a2.set(xlabel=str(lead_dim), ylabel="spread / skill", title="spread-skill ratio")
    return fig


def crps_map(crps, *, lat_dim: str = "lat", lon_dim: str = "lon", title: str | None = None,
             cmap: str = "viridis") -> Figure:
    """Map of a pointwise score over (lat, lon); other dims are averaged. A Dataset or dict gives
    one panel per variable."""
    if isinstance(crps, xr.Dataset):
        items = {k: v for k, v in crps.data_vars.items()}
    elif isinstance(crps, Mapping):
        items = dict(crps)
    else:
        items = {title or "CRPS": crps}
    fig, axes = _panels(items, size=(5.5, 3.5))
    for ax, (label, c) in zip(axes, items.items()):
        c = _as_dataarray(c, "crps")
        if c.ndim >= 2 and lat_dim in c.dims and lon_dim in c.dims:
            c = c.mean([d for d in c.dims if d not in (lat_dim, lon_dim)]).transpose(lat_dim, lon_dim)
            x, y = c[lon_dim].values, c[lat_dim].values
        elif c.ndim == 2:
            y, x = np.arange(c.shape[0]), np.arange(c.shape[1])
        else:
            raise ValueError(f"crps map needs 2-D data over ({lat_dim}, {lon_dim}); got dims {tuple(c.dims)}")
        mesh = ax.pcolormesh(x, y, c.values, cmap=cmap, shading="auto")
        fig.colorbar(mesh, ax=ax, label=str(c.name or "CRPS"))
        ax.set(xlabel=lon_dim, ylabel=lat_dim, title=str(label))
    return fig


def power_spectrum(spectra, *, title: str | None = None) -> Figure:
    """Log-log power spectra. ``spectra``: a DataArray with a ``wavenumber`` dim (other dims
    averaged) or a dict ``{label: spectrum}`` (e.g. truth and forecast) drawn on one axis."""
    items = spectra if isinstance(spectra, Mapping) else {"": spectra}
    fig = Figure(figsize=(5, 4), layout="constrained")
    ax = fig.subplots()
    for label, s in items.items():
        s = _as_dataarray(s, "spectrum")
        kdim = "wavenumber" if "wavenumber" in s.dims else s.dims[-1]
        s = s.mean([d for d in s.dims if d != kdim])
        k = s[kdim].values if kdim in s.coords else np.arange(s.size)
        keep = k > 0  # the mean (k = 0) has no place on a log axis
        ax.loglog(k[keep], s.values[keep], label=str(label) or None)
    ax.set(xlabel="wavenumber", ylabel="power", title=title or "power spectrum")
    if any(str(lbl) for lbl in items):
        ax.legend(fontsize="small")
    return fig
