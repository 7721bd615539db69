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
    return fig, fig.subplots(1, n, squeeze=False)[0]


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


def _coordinate_axis(ax, coord, dim: str) -> np.ndarray:
    """x positions for a coordinate, with the axis label and tick labels set to read it.

    Numbers are kept (label ``long_name (units)`` from the attrs); ``timedelta64`` becomes hours
    (days when all whole days); ``datetime64`` and cftime dates (any calendar, e.g. 360_day) become
    days, labelled as dates on at most 6 slanted ticks so labels never overlap."""
    from matplotlib import dates as mdates
    from matplotlib import ticker

    values = np.asarray(coord.values)
    name = coord.attrs.get("long_name", dim)
    units = coord.attrs.get("units")
    if values.dtype.kind == "m":
        hours = values / np.timedelta64(1, "h")
        whole_days = hours.size > 0 and bool(np.all(np.mod(hours, 24) == 0)) and np.nanmax(np.abs(hours)) >= 48
        ax.set_xlabel(f"{name} ({'days' if whole_days else 'h'})")
        return hours / 24 if whole_days else hours
    first = values.flat[0] if values.size else None
    if values.dtype.kind == "M" or hasattr(first, "calendar"):
        if values.dtype.kind == "M":
            x = mdates.date2num(values)
            locator = mdates.AutoDateLocator(maxticks=6)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        else:  # cftime: days since the first date, labelled in the data's own calendar
            import datetime

            x = np.array([(v - first) / datetime.timedelta(days=1) for v in values.flat]).reshape(values.shape)
            locator = ticker.MaxNLocator(nbins=5)
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(
                lambda d, _: (first + datetime.timedelta(days=float(d))).strftime("%Y-%m-%d")))
        ax.xaxis.set_major_locator(locator)
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        ax.set_xlabel(name)
        return x
    ax.set_xlabel(f"{name} ({units})" if units else str(name))
    return values


def spread_skill(spread, skill=None, *, lead_dim: str | None = None, title: str | None = None) -> Figure:
    """Ensemble spread and ensemble-mean RMSE against lead time (left) and their ratio (right).

    ``spread``: the Dataset from ``spread_skill_ratio(..., components=True)`` (variables
    ``spread``, ``skill``, ``ratio``), a dict ``{label: such Dataset}`` to compare ensembles (one
    colour each: RMSE solid, spread dashed), or a spread DataArray with ``skill`` given
    separately. The x axis is ``lead_dim`` (default: the only dimension), labelled with its
    ``long_name`` and ``units``; time deltas, numpy dates and cftime dates (any calendar) work.
    """
    if isinstance(spread, Mapping) and not isinstance(spread, xr.Dataset):
        items = {str(k): (v["spread"], v["skill"]) for k, v in spread.items()}
    elif isinstance(spread, xr.Dataset):
        items = {"": (spread["spread"], spread["skill"])}
    else:
        if skill is None:
            raise ValueError("pass skill=... or the components Dataset of spread_skill_ratio")
        items = {"": (_as_dataarray(spread, "spread"), _as_dataarray(skill, "skill"))}
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    for i, (label, (sp, sk)) in enumerate(items.items()):
        dim = lead_dim or (sp.dims[0] if sp.ndim == 1 else None)
        if dim is None or dim not in sp.dims:
            raise ValueError(f"spread has dims {tuple(sp.dims)}; name the lead-time dim with lead_dim=")
        other = [d for d in sp.dims if d != dim]
        sp, sk = sp.mean(other), sk.mean(other)
        coord = sp[dim] if dim in sp.coords else xr.DataArray(np.arange(sp.sizes[dim]), dims=dim)
        lead = [_coordinate_axis(a, coord, str(dim)) for a in (a1, a2)][0]
        color, prefix = f"C{i}", f"{label}: " if label else ""
        a1.plot(lead, sk.values, "o-", color=color, label=f"{prefix}RMSE of ensemble mean")
        a1.plot(lead, sp.values, "s--", color=color, label=f"{prefix}ensemble spread")
        a2.plot(lead, (sp / sk).values, "o-", color=color, label=label or None)
    a1.set(ylabel="score", title=title or "spread and skill")
    a1.legend(fontsize="small")
    a2.axhline(1.0, color="k", ls="--", lw=1)
    a2.set(ylabel="spread / skill", title="spread-skill ratio")
    if len(items) > 1:
        a2.legend(fontsize="small")
    return fig


def crps_map(crps, *, lat_dim: str = "lat", lon_dim: str = "lon", title: str | None = None,
             cmap: str = "viridis") -> Figure:
    """Map of a pointwise score over (lat, lon); other dims are averaged. A Dataset or dict gives
    one panel per variable."""
    items = dict(crps) if isinstance(crps, Mapping) else {title or "CRPS": crps}  # (a Dataset: its variables)
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
        keep = (k > 0) & (s.values > 0)  # the mean (k = 0) and zero power have no place on a log axis
        ax.loglog(k[keep], s.values[keep], label=str(label) or None)
    ax.set(xlabel="wavenumber", ylabel="power", title=title or "power spectrum")
    if any(str(lbl) for lbl in items):
        ax.legend(fontsize="small")
    return fig
