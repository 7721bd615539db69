"""Real gridded files that ship inside PyPI wheels, taken as they are by sciffusion.data:
NaN land masks, 360-day calendars, 0-360 and descending coordinates, CF attributes."""

import os

import numpy as np
import pytest

from sciffusion.data import Normalizer, PairDataset, open_dataset, write_netcdf, write_zarr

iris_sample_data = pytest.importorskip("iris_sample_data", reason="real-data wheel from the test extra")
eofs_examples = pytest.importorskip("eofs.examples", reason="real-data wheel from the test extra")
SAMPLE = os.path.join(os.path.dirname(iris_sample_data.__file__), "sample_data")
FILES = {
    "ostia": (os.path.join(SAMPLE, "ostia_monthly.nc"), "surface_temperature"),
    "a1b": (os.path.join(SAMPLE, "A1B_north_america.nc"), "air_temperature"),
    "hgt": (eofs_examples.example_data_path("hgt_djf.nc"), "z"),
}
pytestmark = pytest.mark.filterwarnings("ignore:Ambiguous reference date string")


@pytest.mark.parametrize("name", sorted(FILES))
@pytest.mark.parametrize("fmt", ["zarr", "nc"])
def test_round_trip_keeps_values_mask_coordinates_calendar_and_attributes(name, fmt, tmp_path):
    path, var = FILES[name]
    ds = open_dataset(path).load()
    out = tmp_path / f"copy.{fmt}"
    (write_zarr if fmt == "zarr" else write_netcdf)(ds, out)
    back = open_dataset(out).load()
    np.testing.assert_array_equal(np.isnan(back[var].values), np.isnan(ds[var].values))
    np.testing.assert_array_equal(back[var].values, ds[var].values)
    for coord in ("time", "latitude", "longitude"):
        np.testing.assert_array_equal(back[coord].values, ds[coord].values)
    assert back[var].attrs == ds[var].attrs and back[var].attrs.get("standard_name")
    if name == "a1b":
        assert back["time"].values[0].calendar == "360_day"
        assert float(back["longitude"].min()) >= 180  # 0-360 longitudes stay as they are


def test_ostia_land_mask_becomes_a_loss_mask_and_is_refused_without_it():
    ds = open_dataset(FILES["ostia"][0]).isel(time=slice(0, 6), longitude=slice(0, 48)).load()
    var = "surface_temperature"
    land = np.isnan(ds[var].values)
    assert 0 < land.mean() < 1
    norm = Normalizer.fit(ds, [var])
    assert norm.to_dict()["mean"][var] == pytest.approx(float(np.nanmean(ds[var].values)), rel=1e-6)
    with pytest.raises(ValueError, match="surface_temperature.*NaN"):
        PairDataset(ds, [var], grid_dims=["latitude", "longitude"], normalizer=norm)
    pairs = PairDataset(ds, [var], grid_dims=["latitude", "longitude"], normalizer=norm, allow_missing=True)
    item = pairs[0]
    np.testing.assert_array_equal(item["mask"][0].numpy() == 0, land[1])
    assert np.isfinite(item["x"].numpy()).all() and np.isfinite(item["cond"].numpy()).all()


def test_descending_latitude_passes_through_generation_with_land_left_missing(tmp_path):
    """Train a tiny model on a flipped (descending-latitude) OSTIA subset whose 18-row grid does
    not divide the U-Net factor; the generated ensemble keeps the input's coordinate order, its
    CF attributes, and NaN on every land point."""
    from sciffusion.recipes import sample_from_checkpoint, train_from_config

    var = "surface_temperature"
    ds = open_dataset(FILES["ostia"][0])[[var]].isel(time=slice(0, 12), longitude=slice(0, 40)).load()
    ds = ds.isel(latitude=slice(None, None, -1))
    assert float(ds.latitude[0]) > float(ds.latitude[-1])
    cfg = {
        "data": {"variables": [var], "grid_dims": ["latitude", "longitude"], "along": "time", "allow_missing": True},
        "model": {"net": "UNet2d", "kwargs": {"channels": [8, 8], "blocks_per_level": 1, "attention_levels": [],
                                              "groups": 4, "padding": ["zeros", "zeros"], "fit_grid": "pad"}},
        "training": {"out_dir": str(tmp_path / "run"), "steps": 3, "batch_size": 4, "checkpoint_every": 3},
    }
    train_from_config(cfg, ds=ds, progress=False)
    ens = sample_from_checkpoint(tmp_path / "run", ds, tmp_path / "ens.zarr", n_members=2, cases=[0, 1], steps=2,
                                 progress=False)
    np.testing.assert_array_equal(ens["latitude"].values, ds["latitude"].values)
    assert ens[var].attrs["units"] == ds[var].attrs["units"]
    land = ds[var].isnull().all("time").values
    values = ens[var].values
    assert np.isnan(values[..., land]).all() and np.isfinite(values[..., ~land]).all()
    target_times = ens["target_time"].values
    np.testing.assert_array_equal(target_times, ds["time"].values[[1, 2]])
