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
