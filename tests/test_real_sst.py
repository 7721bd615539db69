"""The real OSTIA SST file through the Downscaler (issue 9), at tiny size: open with
sciffusion.data, block-mean by 3 over the ocean, train a tiny model, generate, and check that
land stays NaN, coordinates and CF attributes come through, the 18 x 432 grid is padded and
cropped back, and mismatched inputs are refused naming the variable."""

import os

import numpy as np
import pytest

from sciffusion.data import open_dataset
from sciffusion.emulators import Downscaler, coarsen

iris_sample_data = pytest.importorskip("iris_sample_data", reason="real-data wheel from the test extra")
PATH = os.path.join(os.path.dirname(iris_sample_data.__file__), "sample_data", "ostia_monthly.nc")
VAR = "surface_temperature"
FACTOR = 3
# three levels: the U-Net down-samples by 4, which does not divide the 18 latitudes
NET = {"kwargs": {"channels": [8, 8, 8], "groups": 4}}


@pytest.fixture(scope="module")
def ostia():
    return open_dataset(PATH)[[VAR]].load()


@pytest.fixture(scope="module")
def model(ostia):
    return Downscaler.fit(ostia.isel(time=slice(0, 8)), [VAR], factor=FACTOR, steps=2, batch_size=4,
                          warmup_steps=1, net=NET)


@pytest.fixture(scope="module")
def ensemble(model, ostia):
    return model.downscale(coarsen(ostia.isel(time=slice(45, 47)), FACTOR), 3, steps=2)


def test_every_land_point_is_nan_in_every_member_and_every_ocean_point_has_a_value(ostia, ensemble):
    land = ostia[VAR].isnull().all("time").values
    assert 0.2 < land.mean() < 0.3                     # the real mask: 26% land
    x = ensemble[VAR].values                           # (time, member, lat, lon)
    assert x.shape == (2, 3, 18, 432)
    assert np.isnan(x[..., land]).all()
    assert np.isfinite(x[..., ~land]).all()
    assert np.nanstd(x[:, 0] - x[:, 1]) > 0            # members differ (it is an ensemble)


def test_coordinates_time_and_cf_attributes_come_through_to_the_ensemble(ostia, ensemble):
    da = ensemble[VAR]
    assert da.dims == ("time", "member", "latitude", "longitude")
    np.testing.assert_allclose(ensemble["latitude"].values, ostia["latitude"].values)
    np.testing.assert_allclose(ensemble["longitude"].values, ostia["longitude"].values)
    assert float(ensemble["longitude"].min()) == 0.0 and float(ensemble["longitude"].max()) > 359  # 0-360 kept
    assert ensemble["longitude"].attrs["units"] == "degrees_east"
    assert ensemble["latitude"].attrs["standard_name"] == "latitude"
    np.testing.assert_array_equal(ensemble["time"].values, ostia["time"].values[45:47])
    assert da.attrs["units"] == "K" and da.attrs["standard_name"] == "surface_temperature"
    assert da.attrs["cell_methods"] == ostia[VAR].attrs["cell_methods"]


def test_the_18_by_432_grid_is_padded_for_the_unet_and_cropped_back(model, ensemble):
    net = model.denoiser.net
    assert net.factor == 4 and 18 % net.factor           # the grid does not divide the down-sampling
    assert net.config["fit_grid"] == "pad"
    assert model.coder.periodic == ["longitude"]        # a global 0-360 longitude wraps around
    assert net.config["padding"] == ["zeros", "circular"]
    x = ensemble[VAR].values
    for row in (0, 17):                                 # the rows next to the padding are generated, not cropped
        sea = np.isfinite(x[0, 0, row])
        assert sea.sum() > 100 and np.ptp(x[0, 0, row, sea]) > 0
    with pytest.raises(ValueError, match="18 is not divisible by the down-sampling factor 4"):
        net.check_grid(18, 432)                         # what fit_grid="error" would have said


def test_a_condition_whose_land_mask_differs_from_training_is_refused_naming_the_variable(model, ostia):
    coarse = coarsen(ostia.isel(time=slice(45, 47)), FACTOR)
    ocean_cell = np.argwhere(np.isfinite(coarse[VAR].values[0]))[0]
    bad = coarse.copy(deep=True)
    bad[VAR].values[:, ocean_cell[0], ocean_cell[1]] = np.nan      # a new "land" cell
    with pytest.raises(ValueError, match="NaN mask of coarse variable 'surface_temperature' differs"):
        model.downscale(bad, 2, steps=2)
    land_cell = np.argwhere(np.isnan(coarse[VAR].values[0]))[0]
    filled = coarse.copy(deep=True)
    filled[VAR].values[:, land_cell[0], land_cell[1]] = 300.0      # a value where training had land
    with pytest.raises(ValueError, match="'surface_temperature' differs.*1 valid where training had none"):
        model.downscale(filled, 2, steps=2)


def test_training_refuses_a_condition_file_masked_differently_from_its_target(ostia):
    fine = ostia.isel(time=slice(0, 4))
    coarse = coarsen(fine, FACTOR)
    cell = np.argwhere(np.isfinite(coarse[VAR].values[0]))[0]
    coarse[VAR].values[:, cell[0], cell[1]] = np.nan
    with pytest.raises(ValueError, match="coarse variable 'surface_temperature' differs from the mask of the fine"):
        Downscaler.fit(fine, [VAR], factor=FACTOR, coarse=coarse, steps=1, batch_size=2, net=NET)


def test_a_variable_without_units_is_refused_naming_the_variable(model, ostia):
    coarse = coarsen(ostia.isel(time=slice(45, 46)), FACTOR)
    del coarse[VAR].attrs["units"]
    with pytest.raises(ValueError, match="variable 'surface_temperature' has no 'units' attribute.*'K'"):
        model.downscale(coarse, 2, steps=2)
    coarse[VAR].attrs["units"] = "degC"
    with pytest.raises(ValueError, match="'surface_temperature' is in units 'degC'.*'K'"):
        model.downscale(coarse, 2, steps=2)
