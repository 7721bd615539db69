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
