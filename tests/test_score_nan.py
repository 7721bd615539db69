"""`sciffusion score` on missing data: a land mask is silent, empty or half-written data are named."""

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from sciffusion.cli import main
from sciffusion.commands.score import score_dataset
from sciffusion.metrics import crps_ensemble, zonal_spectrum

LAND = (slice(None), slice(1, 3), slice(2, 5))  # (lead_time, lat, lon), the same at every lead


def _write(tmp, fc, ob, name):
    coords = {"lead_time": [6, 12, 18], "lat": np.linspace(-60, 60, 4), "lon": np.arange(8) * 45.0}
    xr.Dataset({"t2m": (("member", "lead_time", "lat", "lon"), fc)}, coords=coords).to_zarr(
        tmp / f"{name}_fc.zarr", consolidated=False)
    xr.Dataset({"t2m": (("lead_time", "lat", "lon"), ob)}, coords=coords).to_netcdf(tmp / f"{name}_truth.nc")
    return str(tmp / f"{name}_fc.zarr"), str(tmp / f"{name}_truth.nc")


@pytest.fixture
def land(tmp_path):
    rng = np.random.default_rng(0)
    fc, ob = rng.standard_normal((6, 3, 4, 8)), rng.standard_normal((3, 4, 8))
    fc[(slice(None), *LAND)] = np.nan
    ob[LAND] = np.nan
    return fc, ob, tmp_path


def test_land_mask_is_silent_and_scored_over_the_sea(land, capsys):
    """NaN at the same points in every member and in the truth (land) gives no warning, no
    RuntimeWarning, and the CRPS of the sea points alone."""
    fc, ob, tmp = land
    paths = _write(tmp, fc, ob, "land")
    forecast, truth = xr.open_zarr(paths[0], consolidated=False), xr.open_dataset(paths[1], chunks={})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert main(["score", *paths, "--reduce", "lat", "lon", "--weights", "none", "--out", str(tmp / "o")]) == 0
        scores = score_dataset(forecast, truth, reduce=["lat", "lon"], weights="none")["t2m"].compute()
    assert "warning" not in capsys.readouterr().err
    sea = ~np.isnan(ob[0])
    expected = [crps_ensemble(fc[:, i][:, sea], ob[i][sea], member_dim=0).mean() for i in range(3)]
    np.testing.assert_allclose(pd.read_csv(tmp / "o" / "scores.csv")["crps"], expected, rtol=1e-6)
    np.testing.assert_allclose(scores["crps"].values, expected, rtol=1e-6)


def test_all_nan_truth_is_refused_naming_the_variable(land, capsys):
    fc, ob, tmp = land
    paths = _write(tmp, fc, np.full_like(ob, np.nan), "empty")
    assert main(["score", *paths, "--out", str(tmp / "o")]) == 2
    assert "TRUTH variable 't2m' is entirely NaN (100% missing)" in capsys.readouterr().err
    assert not (tmp / "o").exists()


def test_half_written_ensemble_is_refused_unless_allowed(land, capsys):
    """Members entirely NaN (an unfinished `sample` store) are refused, naming them; with
    --allow-missing the members present are scored, with a warning."""
    fc, ob, tmp = land
    part = fc.copy()
    part[3:] = np.nan
    paths = _write(tmp, part, ob, "half")
    assert main(["score", *paths, "--out", str(tmp / "o")]) == 2
    err = capsys.readouterr().err
    assert "FORECAST variable 't2m' has 3 of 6 members entirely NaN (member [3, 4, 5])" in err and "--allow-missing" in err
    assert not (tmp / "o").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert main(["score", *paths, "--allow-missing", "--reduce", "lat", "lon", "--weights", "none",
                     "--out", str(tmp / "o")]) == 0
    assert "scoring without the 3 members that are entirely NaN (member [3, 4, 5])" in capsys.readouterr().err
    sea = ~np.isnan(ob[0])
    expected = [crps_ensemble(fc[:3, i][:, sea], ob[i][sea], member_dim=0).mean() for i in range(3)]
    np.testing.assert_allclose(pd.read_csv(tmp / "o" / "scores.csv")["crps"], expected, rtol=1e-6)


def test_nan_that_is_not_a_common_mask_is_reported_with_its_fraction(land, capsys):
    fc, ob, tmp = land
    fc = fc.copy()
    fc[0, 0, 0, :6] = np.nan  # 6 of 96 points: NaN in one member only
    paths = _write(tmp, fc, ob, "mixed")
    assert main(["score", *paths]) == 0
    assert "'t2m': 6.2% of points have NaN in the truth or in some members but not all" in capsys.readouterr().err


def test_spectrum_of_a_field_with_land_is_finite():
    """The zonal spectrum drawn by `score` covers the latitudes without land; when every latitude
    has land, the gaps are filled with the zonal mean; never all NaN."""
    from sciffusion.commands._score_report import _spectra

    rng = np.random.default_rng(1)
    coords = {"lat": np.linspace(-60, 60, 4), "lon": np.arange(8) * 45.0}
    ob = xr.DataArray(rng.standard_normal((4, 8)), dims=("lat", "lon"), coords=coords)
    fc = ob + xr.DataArray(rng.standard_normal((3, 4, 8)), dims=("member", "lat", "lon"))
    ob[1:3, 2:5] = np.nan
    spectra, note = _spectra(fc, ob, "lat", "lon")
    np.testing.assert_allclose(spectra["truth"], zonal_spectrum(ob.isel(lat=[0, 3]), reduce_dims="all"))
    assert "2 of 4 latitudes" in note
    ob[:, 6] = np.nan  # land at every latitude
    spectra, note = _spectra(fc, ob, "lat", "lon")
    assert all(np.isfinite(s).all() and s[1:].sum() > 0 for s in spectra.values()) and "filled" in note
