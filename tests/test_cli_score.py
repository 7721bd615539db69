"""`sciffusion score`: reads zarr/netCDF, writes netCDF + CSV + PNG, clear errors."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from sciffusion.cli import main
from sciffusion.metrics import crps_ensemble, latitude_weights


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    coords = {"lead_time": [6, 12, 18], "lat": np.linspace(-60, 60, 4), "lon": np.arange(8) * 45.0}
    fc = xr.Dataset({
        "t2m": (("member", "lead_time", "lat", "lon"), rng.standard_normal((5, 3, 4, 8)).astype(np.float32)),
        "orog": (("lat", "lon"), np.ones((4, 8))),  # no member dim: skipped
    }, coords=coords)
    truth = xr.Dataset({"t2m": (("lead_time", "lat", "lon"), rng.standard_normal((3, 4, 8)))}, coords=coords)
    paths = {"fc_zarr": tmp_path / "fc.zarr", "truth_nc": tmp_path / "truth.nc"}
    fc.to_zarr(paths["fc_zarr"], consolidated=False)
    truth.to_netcdf(paths["truth_nc"])
    return fc, truth, paths, tmp_path


def test_score_writes_tables_and_plots(files, capsys):
    fc, truth, paths, tmp = files
    out = tmp / "out"
    rc = main(["score", str(paths["fc_zarr"]), str(paths["truth_nc"]), "--reduce", "lat", "lon",
               "--fair", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "crps" in printed and "t2m" in printed
    ds = xr.open_dataset(out / "scores.nc")
    w = latitude_weights(fc.lat)
    expected = crps_ensemble(fc.t2m, truth.t2m, fair=True, reduce_dims=["lat", "lon"], weights=w)
    np.testing.assert_allclose(ds["t2m_crps"].values, expected.values, rtol=1e-6)
    csv = pd.read_csv(out / "scores.csv")
    assert list(csv.columns[:2]) == ["variable", "lead_time"] and len(csv) == 3
    np.testing.assert_allclose(csv["crps"], expected.values, rtol=1e-5)
    for kind in ("rank_histogram", "reliability", "crps_map", "spectrum", "spread_skill"):
        assert (out / f"t2m_{kind}.png").read_bytes()[:4] == b"\x89PNG"


def _fail(argv, capsys):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_missing_variable_is_named(files, capsys):
    fc, truth, paths, tmp = files
    truth.rename(t2m="tas").to_netcdf(tmp / "tas.nc")
    err = _fail(["score", str(paths["fc_zarr"]), str(tmp / "tas.nc")], capsys)
    assert "'t2m' is in FORECAST but missing from TRUTH" in err


def test_misaligned_grid_is_named(files, capsys):
    fc, truth, paths, tmp = files
    truth.assign_coords(lat=truth.lat + 1.0).to_netcdf(tmp / "shifted.nc")
    err = _fail(["score", str(paths["fc_zarr"]), str(tmp / "shifted.nc")], capsys)
    assert "do not align along 'lat'" in err


def test_missing_member_dim_is_named(files, capsys):
    fc, truth, paths, tmp = files
    err = _fail(["score", str(paths["fc_zarr"]), str(paths["truth_nc"]), "--member-dim", "ens"], capsys)
    assert "member dimension 'ens'" in err
    err = _fail(["score", str(tmp / "nope.zarr"), str(paths["truth_nc"])], capsys)
    assert "does not exist" in err


def test_score_file_carries_the_variables_cf_attributes(files):
    """Scores in the variable's units keep its `units` (CRPS, RMSE, bias, spread are in K for a field
    in K); the spread-skill ratio is unitless; long_name and standard_name come from the input."""
    fc, truth, paths, tmp = files
    fc = fc.copy()
    fc["t2m"].attrs = {"units": "K", "long_name": "2 m temperature", "standard_name": "air_temperature"}
    fc.to_zarr(tmp / "fc_attrs.zarr", consolidated=False)
    assert main(["score", str(tmp / "fc_attrs.zarr"), str(paths["truth_nc"]), "--out", str(tmp / "o")]) == 0
    ds = xr.open_dataset(tmp / "o" / "scores.nc")
    for k in ("crps", "rmse", "bias", "spread"):
        assert ds[f"t2m_{k}"].attrs["units"] == "K"
        assert ds[f"t2m_{k}"].attrs["long_name"].endswith("of 2 m temperature")
        assert ds[f"t2m_{k}"].attrs["source_standard_name"] == "air_temperature"
    assert ds["t2m_spread_skill_ratio"].attrs["units"] == "1"


def test_dims_that_differ_are_refused_naming_both(files, capsys):
    """A truth on other dims (y/x for lat/lon, or an extra init_time) is refused, naming the dims
    of both files, before anything is written: never a cross product of the two."""
    fc, truth, paths, tmp = files
    truth.rename(lat="y", lon="x").to_netcdf(tmp / "yx.nc")
    err = _fail(["score", str(paths["fc_zarr"]), str(tmp / "yx.nc"), "--out", str(tmp / "o")], capsys)
    assert "TRUTH dims ('lead_time', 'y', 'x') and FORECAST dims ('member', 'lead_time', 'lat', 'lon') differ" in err
    assert "only in TRUTH: ['y', 'x'], only in FORECAST: ['lat', 'lon']" in err
    truth.expand_dims(init_time=[0, 1]).to_netcdf(tmp / "init.nc")
    err = _fail(["score", str(paths["fc_zarr"]), str(tmp / "init.nc"), "--out", str(tmp / "o")], capsys)
    assert "only in TRUTH: ['init_time'], only in FORECAST: []" in err
    assert not (tmp / "o").exists()


def test_table_leaves_out_the_truths_own_coordinates(files):
    """The truth's scalar and auxiliary coordinates (forecast_reference_time, forecast_period)
    are not columns of the table; the forecast's own dims are."""
    fc, truth, paths, tmp = files
    truth.assign_coords(forecast_reference_time=np.datetime64("2020-01-01"),
                        forecast_period=("lead_time", [0.25, 0.5, 0.75])).to_netcdf(tmp / "frt.nc")
    assert main(["score", str(paths["fc_zarr"]), str(tmp / "frt.nc"), "--out", str(tmp / "o"), "--no-plots"]) == 0
    csv = pd.read_csv(tmp / "o" / "scores.csv")
    assert list(csv.columns) == ["variable", "lead_time", "crps", "rmse", "bias", "spread", "spread_skill_ratio"]


def test_360_day_calendar_scores_and_plots(files, capsys):
    """An ensemble on a 360-day (cftime) time axis is scored and every plot is written."""
    fc, truth, paths, tmp = files
    time = xr.date_range("2000-02-28", periods=3, freq="D", calendar="360_day", use_cftime=True)
    fc.rename(lead_time="time").assign_coords(time=time).to_zarr(tmp / "fc360.zarr", consolidated=False)
    truth.rename(lead_time="time").assign_coords(time=time).to_netcdf(tmp / "truth360.nc")
    out = tmp / "o360"
    assert main(["score", str(tmp / "fc360.zarr"), str(tmp / "truth360.nc"), "--out", str(out)]) == 0
    assert "2000-02-30" in capsys.readouterr().out
    for kind in ("rank_histogram", "reliability", "crps_map", "spectrum", "spread_skill"):
        assert (out / f"t2m_{kind}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture
def daily(tmp_path):
    """40 daily forecasts: a sharp ensemble around the signal, a blurred one, and the truth."""
    rng = np.random.default_rng(1)
    coords = {"time": pd.date_range("2020-01-01", periods=40), "lat": np.linspace(-60, 60, 4),
              "lon": np.arange(8) * 45.0}
    signal = rng.standard_normal((40, 4, 8))
    truth = xr.Dataset({"t2m": (("time", "lat", "lon"), signal + 0.5 * rng.standard_normal((40, 4, 8)))}, coords=coords)
    dims = ("member", "time", "lat", "lon")
    good = xr.Dataset({"t2m": (dims, signal + 0.5 * rng.standard_normal((6, 40, 4, 8)))}, coords=coords)
    blurred = xr.Dataset({"t2m": (dims, 0.3 * signal + rng.standard_normal((6, 40, 4, 8)))}, coords=coords)
    tmp = tmp_path / "daily"
    tmp.mkdir()
    truth.to_netcdf(tmp / "truth.nc")
    good.to_zarr(tmp / "good.zarr", consolidated=False)
    blurred.to_zarr(tmp / "blurred.zarr", consolidated=False)
    return good, truth, tmp


def test_intervals_sit_next_to_the_scores_and_contain_them(daily, capsys):
    """Averaged over a 40-day time dim, each score gets a 90% block-bootstrap interval that holds
    the score and equals block_bootstrap of the per-day (area-weighted) scores."""
    from sciffusion.metrics.uncertainty import block_bootstrap

    good, truth, tmp = daily
    argv = ["score", str(tmp / "good.zarr"), str(tmp / "truth.nc"), "--reduce", "time", "lat", "lon",
            "--block-length", "3", "--out", str(tmp / "o"), "--no-plots"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "crps_lo" in printed
    assert "90% circular block bootstrap of 't2m' along 'time' (40 values, blocks of 3" in printed
    csv = pd.read_csv(tmp / "o" / "scores.csv")
    assert list(csv.columns[:4]) == ["variable", "crps", "crps_lo", "crps_hi"]
    for k in ("crps", "rmse", "bias", "spread"):
        assert (csv[f"{k}_lo"] <= csv[k]).all() and (csv[k] <= csv[f"{k}_hi"]).all()
    per_day = crps_ensemble(good.t2m, truth.t2m, reduce_dims=["lat", "lon"], weights=latitude_weights(good.lat))
    expected = block_bootstrap(per_day, dim="time", block_length=3)
    np.testing.assert_allclose(csv[["crps_lo", "crps_hi"]].values[0], [expected.lower, expected.upper], rtol=1e-5)
    ds = xr.open_dataset(tmp / "o" / "scores.nc")
    assert ds["t2m_crps_hi"].attrs["long_name"].startswith("upper end of the 90% interval")


def test_no_intervals_without_a_long_enough_time_dim_says_why(files, daily, capsys):
    fc, truth, paths, tmp = files
    assert main(["score", str(paths["fc_zarr"]), str(paths["truth_nc"])]) == 0
    assert "no intervals for 't2m': no time-like dim among the averaged dims ['lat', 'lon']" in capsys.readouterr().out
    good, truth, tmp = daily
    err = _fail(["score", str(tmp / "good.zarr"), str(tmp / "truth.nc"), "--bootstrap-dim", "time"], capsys)
    assert "--bootstrap-dim 'time' is not among the averaged dims ['lat', 'lon']; add it to --reduce" in err


def test_compare_with_itself_gives_no_difference(daily, capsys):
    """A against A: difference 0 with interval [0, 0], skill 0, Diebold-Mariano p-value 1."""
    good, truth, tmp = daily
    z = str(tmp / "good.zarr")
    assert main(["score", z, str(tmp / "truth.nc"), "--reduce", "time", "lat", "lon", "--compare", z,
                 "--out", str(tmp / "o"), "--no-plots"]) == 0
    table = pd.read_csv(tmp / "o" / "compare.csv")
    assert list(table.score) == ["crps", "mse"]
    for k in ("difference", "difference_lo", "difference_hi", "skill", "skill_lo", "skill_hi", "dm_statistic"):
        assert (table[k] == 0).all(), k
    assert (table.dm_p_value == 1).all()


def test_compare_finds_the_better_ensemble(daily, capsys):
    """The sharp ensemble beats the blurred one: negative CRPS difference with an interval below 0,
    CRPSS > 0 equal to 1 - CRPS_A/CRPS_B, Diebold-Mariano p-value < 0.001."""
    good, truth, tmp = daily
    argv = ["score", str(tmp / "good.zarr"), str(tmp / "truth.nc"), "--reduce", "time", "lat", "lon",
            "--compare", str(tmp / "blurred.zarr"), "--out", str(tmp / "o"), "--no-plots"]
    assert main(argv) == 0
    assert "dm_p_value" in capsys.readouterr().out
    row = pd.read_csv(tmp / "o" / "compare.csv").set_index("score").loc["crps"]
    assert row.difference_hi < 0 and row.dm_p_value < 1e-3 and row.skill_lo > 0
    np.testing.assert_allclose(row.skill, 1 - row.A / row.B, rtol=1e-6)
    w = latitude_weights(good.lat)
    expected = crps_ensemble(good.t2m, truth.t2m, reduce_dims="all", weights=w)
    np.testing.assert_allclose(row.A, float(expected), rtol=1e-5)
