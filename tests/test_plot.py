"""Plots: each returns a Figure built headless from real metric output, and saves to PNG."""

import sys

import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

import sciffusion.metrics as sm
from sciffusion import plot


@pytest.fixture(scope="module")
def ens():
    rng = np.random.default_rng(0)
    fc = xr.DataArray(rng.standard_normal((5, 3, 6, 12)), dims=("member", "lead_time", "lat", "lon"),
                      coords={"lat": np.linspace(-75, 75, 6), "lon": np.arange(12) * 30.0,
                              "lead_time": [6, 12, 18]})
    ob = xr.DataArray(rng.standard_normal((3, 6, 12)), dims=("lead_time", "lat", "lon"),
                      coords={k: fc[k] for k in ("lead_time", "lat", "lon")})
    return fc, ob


def _check(fig, tmp_path, name):
    assert isinstance(fig, Figure)
    out = tmp_path / f"{name}.png"
    fig.savefig(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_are_headless_figures(ens, tmp_path):
    fc, ob = ens
    hist = sm.rank_histogram(fc, ob, reduce_dims="all")
    fig = plot.rank_histogram(hist)
    bars = fig.axes[0].patches
    assert len(bars) == 6
    np.testing.assert_allclose([b.get_height() for b in bars], hist.values / hist.values.sum())
    _check(fig, tmp_path, "rank")

    rel = sm.reliability(fc, ob, 0.0, bins=5, reduce_dims="all")
    _check(plot.reliability_diagram(rel), tmp_path, "rel")

    comp = sm.spread_skill_ratio(fc, ob, reduce_dims=["lat", "lon"], components=True)
    fig = plot.spread_skill(comp)
    ratio_line = fig.axes[1].lines[0]
    np.testing.assert_allclose(ratio_line.get_ydata(), comp.ratio.values)
    _check(fig, tmp_path, "ss")

    _check(plot.crps_map(sm.crps_ensemble(fc, ob)), tmp_path, "map")
    spec = {"truth": sm.zonal_spectrum(ob, reduce_dims="all"),
            "forecast": sm.zonal_spectrum(fc, reduce_dims="all")}
    fig = plot.power_spectrum(spec)
    assert len(fig.axes[0].lines) == 2
    _check(fig, tmp_path, "spec")
    assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()


def test_plot_errors_name_the_problem(ens):
    fc, ob = ens
    with pytest.raises(ValueError, match="lead_dim"):
        plot.spread_skill(sm.spread_skill_ratio(fc, ob, components=True))
    with pytest.raises(ValueError, match="needs 2-D data"):
        plot.crps_map(sm.crps_ensemble(fc, ob, reduce_dims=["lat", "lon"]))


def _spread_skill_dataset(lead, rng, name="lead_time", attrs=None):
    sp = xr.DataArray(rng.uniform(0.5, 1.0, len(lead)), dims=name, coords={name: (name, lead, attrs or {})})
    return xr.Dataset({"spread": sp, "skill": sp * 1.1})


def _drawn_tick_labels(fig, ax):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    lo, hi = sorted(ax.get_xlim())
    return [(t.get_text(), t.get_window_extent(renderer)) for t, x in zip(ax.get_xticklabels(), ax.get_xticks())
            if lo <= x <= hi and t.get_visible() and t.get_text()]


@pytest.mark.parametrize("kind", ["cftime_360_day", "datetime64", "timedelta64"])
def test_spread_skill_takes_time_axes_with_readable_ticks(kind, tmp_path):
    """spread_skill plots against cftime dates (360-day calendar), numpy dates and time deltas:
    the curve holds every lead, at most 6 tick labels are drawn and no two of them overlap."""
    rng = np.random.default_rng(1)
    lead = {"cftime_360_day": xr.date_range("2000-01-01", periods=40, freq="D", calendar="360_day", use_cftime=True),
            "datetime64": np.datetime64("2000-01-01") + np.arange(40) * np.timedelta64(1, "D"),
            "timedelta64": np.arange(40) * np.timedelta64(6, "h")}[kind]
    fig = plot.spread_skill(_spread_skill_dataset(np.asarray(lead), rng), title=kind)
    assert len(fig.axes[0].lines[0].get_xdata()) == 40
    for ax in fig.axes:
        labels = _drawn_tick_labels(fig, ax)
        assert 2 <= len(labels) <= 8
        boxes = [b for _, b in labels]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), [t for t, _ in labels]
    if kind == "cftime_360_day":  # labelled in the data's own calendar
        texts = [t for t, _ in _drawn_tick_labels(fig, fig.axes[0])]
        assert all(t.startswith("2000-0") for t in texts) and "2000-01-01" in texts
    if kind == "timedelta64":
        assert fig.axes[0].get_xlabel() == "lead_time (h)"
        np.testing.assert_allclose(fig.axes[0].lines[0].get_xdata(), np.arange(40) * 6.0)
    _check(fig, tmp_path, kind)


def test_spread_skill_compares_ensembles_and_labels_lead_units():
    """A dict of ensembles gives one ratio curve and legend entry per ensemble, and the lead axis
    reads `long_name (units)` from the coordinate's attrs."""
    rng = np.random.default_rng(2)
    attrs = {"long_name": "lead time", "units": "model time units"}
    comps = {name: _spread_skill_dataset(np.arange(1, 5) * 0.25, rng, attrs=attrs) for name in ("2 seeds", "physics", "emulated")}
    fig = plot.spread_skill(comps)
    a1, a2 = fig.axes[:2]
    assert len(a2.lines) == 4  # three ratios and the line at 1
    for line, comp in zip(a2.lines, comps.values()):
        np.testing.assert_allclose(line.get_ydata(), (comp.spread / comp.skill).values)
    assert [t.get_text() for t in a2.get_legend().get_texts()] == list(comps)
    assert len(a1.get_legend().get_texts()) == 6
    assert a1.get_xlabel() == "lead time (model time units)"


def test_demo_spread_skill_figure_shows_seeds_physics_and_emulated():
    """The demo's spread-skill plot draws every ensemble it scores, not only the emulated one."""
    from sciffusion.demo import spread_skill_figure

    rng = np.random.default_rng(3)
    lead = xr.DataArray([0.25, 0.5, 0.75], dims="lead_time", attrs={"long_name": "lead time", "units": "model time units"})
    truth = xr.DataArray(rng.standard_normal((2, 3, 4)), dims=("init_time", "lead_time", "k"), coords={"lead_time": lead})
    ens = {f"{m} members": truth + xr.DataArray(rng.standard_normal((m, 2, 3, 4)), dims=("member", *truth.dims))
           for m in (2, 5, 7)}
    fig = spread_skill_figure(ens, truth)
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == list(ens)
    assert fig.axes[0].get_xlabel() == "lead time (model time units)"
