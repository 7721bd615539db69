"""Downscaler (issue 7) and its real-data behaviour (issue 9): block means, interpolation
baselines, the residual recipe, land masks, stable members, resume, checkpoints, bad inputs, and a
tiny trained model on a problem whose answer is known."""

import json

import numpy as np
import pytest
import torch
import xarray as xr

from sciffusion.emulators import Downscaler, coarsen, upsample
from sciffusion.emulators.coarsen import is_global_longitude

FACTOR = 4
ATTRS = {"units": "K", "long_name": "sea surface temperature", "standard_name": "sea_surface_temperature"}


def sst(n_time=6, seed=0, land=True):
    """A 16 x 16 global-longitude field with a 6 x 6 'land' corner (NaN at every time)."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(-60, 60, 16)
    lon = np.arange(16) * 22.5
    y, x = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    base = 290 + 5 * np.cos(y) * np.sin(x)
    v = base[None] + rng.normal(size=(n_time, 16, 16))
    if land:
        v[:, :6, :6] = np.nan
    return xr.Dataset({"sst": (("time", "lat", "lon"), v.astype(np.float32), dict(ATTRS))},
                      coords={"time": np.arange(n_time), "lat": ("lat", lat, {"units": "degrees_north"}),
                              "lon": ("lon", lon, {"units": "degrees_east"})}, attrs={"title": "toy"})


@pytest.fixture(scope="module")
def model():
    net = {"kwargs": {"channels": [8, 8], "groups": 4}}
    return Downscaler.fit(sst(), factor=FACTOR, steps=2, batch_size=4, net=net, warmup_steps=1)


# ----------------------------------------------------------------------------- coarsen / upsample
def test_coarsen_equals_hand_computed_block_means_over_valid_points_with_empty_blocks_nan():
    a = np.arange(16.0).reshape(4, 4)
    a[0, 0] = np.nan                   # block (0, 0): mean of the 3 valid points
    a[2:, 2:] = np.nan                 # block (1, 1): no valid point -> NaN
    da = xr.DataArray(a, dims=("y", "x"), coords={"y": [0.0, 1, 2, 3], "x": [10.0, 20, 30, 40]},
                      attrs={"units": "m"}, name="h")
    c = coarsen(da, 2)
    expect = np.array([[(1 + 4 + 5) / 3, (2 + 3 + 6 + 7) / 4], [(8 + 9 + 12 + 13) / 4, np.nan]])
    np.testing.assert_allclose(c.values, expect)
    np.testing.assert_array_equal(c["y"].values, [0.5, 2.5])
    np.testing.assert_array_equal(c["x"].values, [15.0, 35.0])
    assert c.attrs == {"units": "m"} and c.name == "h"


def test_coarsen_keeps_dataset_attrs_and_names_the_dimension_that_does_not_divide():
    ds = sst()
    c = coarsen(ds, FACTOR)
    assert c.sizes == {"time": 6, "lat": 4, "lon": 4}
    assert c["sst"].attrs == ATTRS and c.attrs == {"title": "toy"} and c["lon"].attrs == {"units": "degrees_east"}
    assert c["sst"].dtype == np.float32
    with pytest.raises(ValueError, match="dimension 'lat' has size 16.*not divisible by 5"):
        coarsen(ds, 5)


def test_nearest_upsampling_inverts_coarsening_on_block_constant_fields():
    rng = np.random.default_rng(1)
    blocks = rng.normal(size=(3, 4, 5))
    fine = xr.DataArray(np.kron(blocks, np.ones((1, FACTOR, FACTOR))), dims=("t", "y", "x"),
                        coords={"y": np.arange(16.0), "x": np.arange(20.0)})
    c = coarsen(fine, FACTOR)
    back = upsample(c, FACTOR, method="nearest")
    np.testing.assert_allclose(back.values, fine.values, atol=1e-12)
    np.testing.assert_allclose(back["x"].values, fine["x"].values)   # cell centres come back
    for method in ("nearest", "bilinear", "bicubic"):   # constants stay constant, on every method
        const = upsample(xr.full_like(c, 3.5), FACTOR, method=method)
        np.testing.assert_allclose(const.values, 3.5, atol=1e-12)
    np.testing.assert_allclose(coarsen(upsample(c, FACTOR, method="nearest"), FACTOR).values, c.values)


def test_upsampling_is_periodic_in_a_global_longitude_and_fills_coasts_from_the_sea():
    ds = sst(land=False)
    c = coarsen(ds, FACTOR)["sst"]
    assert is_global_longitude(c["lon"]) and not is_global_longitude(c["lat"])
    rolled = upsample(c.roll(lon=1), FACTOR).values
    np.testing.assert_allclose(rolled, np.roll(upsample(c, FACTOR).values, FACTOR, axis=-1), atol=1e-4)
    flat = upsample(c, FACTOR, periodic=False).values
    assert np.abs(flat - upsample(c, FACTOR).values)[..., 0].max() > 1e-3   # the wrap changes the edges
    land = sst()
    cl = coarsen(land, FACTOR)["sst"]
    fine_valid = land["sst"].notnull().all("time")
    up = upsample(cl, FACTOR, mask=fine_valid)
    assert bool(np.isfinite(up.values[:, fine_valid.values]).all())     # every sea point has a value
    assert bool(np.isnan(up.values[:, ~fine_valid.values]).all())


# ----------------------------------------------------------------------------- the model
def test_a_zero_residual_gives_the_bicubic_upsampling_in_every_member(model):
    """The CorrDiff recipe: fine = upsample(coarse) + residual; with a denoiser that says the
    residual is exactly 0, every member (so the ensemble mean) is the bicubic baseline."""
    coarse = coarsen(sst(3, seed=5), FACTOR)
    zero = Downscaler(lambda x, sigma, cond=None: torch.zeros_like(x), model.coder)
    ens = zero.downscale(coarse, 3)
    valid = sst()["sst"].notnull().all("time")
    bicubic = upsample(coarse, FACTOR, method="bicubic", mask=valid)["sst"]
    for m in range(3):
        np.testing.assert_allclose(ens["sst"].isel(member=m).values, bicubic.values, rtol=0, atol=1e-4, equal_nan=True)


def test_land_stays_nan_with_attributes_coordinates_and_provenance(model):
    coarse = coarsen(sst(2, seed=3), FACTOR)
    ens = model.downscale(coarse, 4, steps=3)
    land = sst()["sst"].isnull().all("time").values
    x = ens["sst"].values
    assert ens["sst"].dims == ("time", "member", "lat", "lon")
    assert np.isnan(x[..., land]).all() and np.isfinite(x[..., ~land]).all()
    assert ens["sst"].attrs == ATTRS
    np.testing.assert_allclose(ens["lon"].values, sst()["lon"].values)
    np.testing.assert_array_equal(ens["member"].values, np.arange(4))
    for key in ("sciffusion_version", "weights_sha256", "sampler", "seed", "input_sha256"):
        assert key in ens.attrs
    assert '"eta": 1.0' in ens.attrs["sampler"] and '"steps": 3' in ens.attrs["sampler"]


def test_member_k_is_the_same_draw_whatever_the_ensemble_and_batch_size(model):
    coarse = coarsen(sst(2, seed=4), FACTOR)
    small = model.downscale(coarse, 2, steps=3, seed=7)["sst"].values
    large = model.downscale(coarse, 5, steps=3, seed=7, batch_size=3)["sst"].values
    np.testing.assert_array_equal(small, large[:, :2])
    other = model.downscale(coarse, 2, steps=3, seed=8)["sst"].values
    assert np.nanmax(np.abs(other - small)) > 1e-3


def test_philox_streams_keep_members_stable_are_recorded_and_draw_other_numbers(model):
    coarse = coarsen(sst(2, seed=4), FACTOR)
    small = model.downscale(coarse, 2, steps=3, seed=7, rng="philox")
    large = model.downscale(coarse, 5, steps=3, seed=7, batch_size=3, rng="philox")["sst"].values
    np.testing.assert_array_equal(small["sst"].values, large[:, :2])
    assert '"rng": "philox"' in small.attrs["sampler"]
    default = model.downscale(coarse, 2, steps=3, seed=7)
    assert "rng" not in default.attrs["sampler"]
    assert np.nanmax(np.abs(default["sst"].values - small["sst"].values)) > 1e-3
    with pytest.raises(ValueError, match="rng must be one of"):
        model.downscale(coarse, 2, steps=3, rng="Philox")


def test_resume_after_a_crash_gives_the_same_store_as_an_uninterrupted_run(model, tmp_path, monkeypatch):
    coarse = coarsen(sst(2, seed=6), FACTOR)
    full = model.downscale(coarse, 5, steps=2, out=tmp_path / "full.zarr", member_chunk=2)
    calls = {"n": 0}
    real = Downscaler._draw

    def crashing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Downscaler, "_draw", crashing)
    with pytest.raises(KeyboardInterrupt):
        model.downscale(coarse, 5, steps=2, out=tmp_path / "part.zarr", member_chunk=2)
    monkeypatch.setattr(Downscaler, "_draw", real)
    with pytest.raises(FileExistsError):
        model.downscale(coarse, 5, steps=2, out=tmp_path / "part.zarr", member_chunk=2)
    with pytest.raises(ValueError, match="cannot resume.*seed"):
        model.downscale(coarse, 5, steps=2, seed=1, out=tmp_path / "part.zarr", member_chunk=2, mode="resume")
    resumed = model.downscale(coarse, 5, steps=2, out=tmp_path / "part.zarr", member_chunk=2, mode="resume")
    np.testing.assert_array_equal(resumed["sst"].values, full["sst"].values)
    assert resumed["sst"].attrs == ATTRS


def test_save_and_load_give_identical_samples_without_pickle(model, tmp_path):
    coarse = coarsen(sst(2, seed=2), FACTOR)
    model.sampler = {"method": "ddim", "steps": 3, "eta": 0.5}
    path = model.save(tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "weights.safetensors"]
    back = Downscaler.load(path)
    assert back.sampler == model.sampler and back.checkpoint_sha256 == model.checkpoint_sha256
    np.testing.assert_array_equal(back.downscale(coarse, 3)["sst"].values, model.downscale(coarse, 3)["sst"].values)
    model.sampler = {"method": "ddim", "steps": 16, "eta": 1.0}


@pytest.mark.filterwarnings("ignore:Consolidated metadata")
def test_the_command_line_writes_a_resumable_store_with_provenance(model, tmp_path, capsys):
    from sciffusion.cli import main

    model.save(tmp_path / "ckpt")
    coarsen(sst(2, seed=9), FACTOR).to_zarr(tmp_path / "coarse.zarr")
    argv = ["downscale", str(tmp_path / "ckpt"), str(tmp_path / "coarse.zarr"), "-o", str(tmp_path / "ens.zarr"),
            "--members", "3", "--steps", "2", "--eta", "0.3", "--no-progress"]
    assert main(argv) == 0
    assert main(argv) == 2 and "exists" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    ens = xr.open_zarr(tmp_path / "ens.zarr")
    assert ens.sizes["member"] == 3 and '"eta": 0.3' in ens.attrs["sampler"] and ens.attrs["checkpoint_sha256"]
    # --temperature reaches the sampler: 1.5 widens the members around the same DDIM path; 0 is refused, nothing written
    hot = [*argv[:4], str(tmp_path / "hot.zarr"), *argv[5:], "--temperature", "1.5"]
    assert main(hot) == 0 and '"temperature": 1.5' in xr.open_zarr(tmp_path / "hot.zarr").attrs["sampler"]
    assert main([*hot[:4], str(tmp_path / "cold.zarr"), *hot[5:-1], "0"]) == 2
    assert "temperature" in capsys.readouterr().err and not (tmp_path / "cold.zarr").exists()
    sst().to_zarr(tmp_path / "fine.zarr")
    assert main(["downscale", str(tmp_path / "run"), "--train", str(tmp_path / "fine.zarr"), "--factor", "4",
                 "--train-steps", "1", "--no-progress"]) == 0
    trained = Downscaler.load(tmp_path / "run")
    assert trained.coder.factor == 4 and trained.coder.variables == ["sst"]


# ----------------------------------------------------------------------------- bad inputs
def _bad(case):
    good = coarsen(sst(2, seed=1), FACTOR)
    if case == "factor":
        return coarsen(sst(2), 2), r"coarse grid 8x8 does not match factor 4 of the fine grid 16x16 .*expected.* 4x4"
    if case == "variable":
        return good.rename(sst="tos"), r"lacks variable\(s\) \['sst'\]"
    if case == "mask":
        bad = good.copy(deep=True)
        bad["sst"][:, 3, 3] = np.nan
        return bad, r"NaN mask of coarse variable 'sst' differs from the training mask at 1 grid point"
    if case == "units":
        bad = good.copy()
        bad["sst"].attrs = {}
        return bad, r"variable 'sst' has no 'units'.* trained on 'sst' in units 'K'"
    if case == "other units":
        bad = good.copy()
        bad["sst"].attrs = {**ATTRS, "units": "degC"}
        return bad, r"'sst' is in units 'degC' but the model was trained on 'K'"


@pytest.mark.parametrize("case", ["factor", "variable", "mask", "units", "other units"])
def test_bad_coarse_inputs_are_refused_naming_the_problem(model, case):
    bad, message = _bad(case)
    with pytest.raises(ValueError, match=message):
        model.downscale(bad, 2, steps=2)


def test_nan_in_a_field_trained_without_missing_values_and_mismatched_training_masks_are_refused():
    net = {"kwargs": {"channels": [8], "groups": 4}}
    m = Downscaler.fit(sst(land=False), factor=FACTOR, steps=1, batch_size=4, net=net)
    c = coarsen(sst(2, land=False), FACTOR)
    c["sst"][0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="coarse variable 'sst' has 1 NaN value.*without missing values"):
        m.downscale(c, 2)
    fine = sst()
    cond = coarsen(sst(land=False), FACTOR)   # the condition file has sea where the target has land
    with pytest.raises(ValueError, match="NaN mask of coarse variable 'sst' differs from the mask of the fine target at 1"):
        Downscaler.fit(fine, factor=FACTOR, coarse=cond, steps=1, batch_size=4, net=net)
    with pytest.raises(ValueError, match=r"variable\(s\) \['tos'\] not found"):
        Downscaler.fit(fine, ["tos"], factor=FACTOR, steps=1)


# ----------------------------------------------------------------------------- a known answer
def test_a_trained_model_learns_a_residual_variance_that_depends_on_the_coarse_field():
    """fine = bicubic(coarse) + s * noise with s = 0.2 where the upsampled field is positive and
    s = 1 where it is negative: a small trained model draws members whose variance is close to
    s^2 in each region (0.04 and 1), on coarse fields it has not seen; and the spread-skill table
    of calibration chooses the DDIM setting whose ratio is closest to 1."""
    rng = np.random.default_rng(0)

    def make(n):
        c = xr.DataArray(rng.normal(size=(n, 4, 4)), dims=("time", "y", "x"), name="w")
        up = upsample(c, FACTOR, periodic=True)
        s = np.where(up.values > 0, 0.2, 1.0)
        return (up + s * rng.normal(size=up.shape)).to_dataset(name="w"), c.to_dataset(), up.values

    fine, coarse, _ = make(1024)
    torch.manual_seed(0)
    m = Downscaler.fit(fine, factor=FACTOR, coarse=coarse, periodic=True, steps=300, batch_size=16, lr=2e-3,
                       warmup_steps=20, ema_decay=0.95, net={"kwargs": {"channels": [16], "groups": 4}})
    f_new, c_new, up = make(4)
    var = m.downscale(c_new, 16, steps=32, method="heun")["w"].var("member").values
    calm, rough = var[up > 0].mean(), var[up < 0].mean()
    assert 0.02 < calm < 0.08 and 0.6 < rough < 1.5, (calm, rough)
    table = m.calibrate(c_new, f_new, steps=(4, 16), etas=(0.0, 1.0), n_members=4)
    assert list(table.columns[:10]) == ["method", "steps", "eta", "s_noise", "variance", "spread", "rmse", "ssr",
                                        "crps", "high_k_error"]
    best = table.loc[table["chosen"]].iloc[0]
    assert abs(best["ssr"] - 1) == (table["ssr"] - 1).abs().min()
    assert m.sampler == {"method": "ddim", "steps": int(best["steps"]), "eta": float(best["eta"])}
    assert table.loc[table["steps"] == 16, "variance"].max() > table.loc[table["steps"] == 4, "variance"].min()

    # the EDM stochastic sampler's noise inflation raises the spread; the joint criterion picks the
    # row with the least |ssr - 1| + |high-k power error| and stores its s_noise and churn
    table = m.calibrate(c_new, f_new, steps=(16,), etas=(0.0,), s_noises=(1.0, 1.3), criterion="ssr+spectrum",
                        n_members=4)
    stoch = table[table["method"] == "stochastic"].set_index("s_noise")
    assert stoch.loc[1.3, "variance"] > 1.2 * stoch.loc[1.0, "variance"]
    cost = (table["ssr"] - 1).abs() + table["high_k_error"].abs()
    best = table.loc[table["chosen"]].iloc[0]
    assert cost[table["chosen"]].iloc[0] == cost.min()
    if best["method"] == "stochastic":
        assert m.sampler == {"method": "stochastic", "steps": 16, "s_noise": float(best["s_noise"]), "churn": 40.0}
    ens = m.downscale(c_new, 2, method="stochastic", steps=4, s_noise=1.3)
    assert json.loads(ens.attrs["sampler"]) == {"method": "stochastic", "steps": 4, "churn": 40.0, "s_noise": 1.3}
    with pytest.raises(ValueError, match="criterion must be"):
        m.calibrate(c_new, f_new, criterion="crps")


def test_high_k_error_of_calibration_scores_is_the_band_power_ratio_minus_one():
    """Members equal to the truth have no power error; members twice the truth have 4x the power
    (error 3); a grid with a missing point has no spectrum (NaN) but keeps the other scores."""
    from types import SimpleNamespace

    from sciffusion.emulators.calibrate import _scores

    coder = SimpleNamespace(channels=1, variables=["w"], scale={"w": 1.0})  # what _scores reads of a coder
    t = np.random.default_rng(0).normal(size=(3, 1, 16, 16))
    same = _scores(np.stack([t, t], axis=1), t, coder)
    assert same["high_k_error"] == pytest.approx(0.0, abs=1e-12) and same["rmse"] == pytest.approx(0.0, abs=1e-12)
    assert _scores(np.stack([2 * t, 2 * t], axis=1), t, coder)["high_k_error"] == pytest.approx(3.0, rel=1e-12)
    t_nan = t.copy()
    t_nan[0, 0, 0, 0] = np.nan
    r = _scores(np.stack([t, t], axis=1), t_nan, coder)
    assert np.isnan(r["high_k_error"]) and np.isfinite(r["crps"])


# ----------------------------------------------------------------------------- real data (issue 9)
@pytest.mark.filterwarnings("ignore:Ambiguous reference date string")
def test_real_ostia_sst_downscales_3x_with_every_land_point_left_nan():
    """OSTIA monthly SST (18 x 432, NaN over land, global longitude): the 18-row grid does not divide
    the U-Net (padded and cropped), longitude wraps, times and CF attributes pass through."""
    import os

    iris_sample_data = pytest.importorskip("iris_sample_data", reason="real-data wheel from the test extra")
    from sciffusion.data import open_dataset

    path = os.path.join(os.path.dirname(iris_sample_data.__file__), "sample_data", "ostia_monthly.nc")
    var = "surface_temperature"
    ds = open_dataset(path)[[var]].isel(time=slice(0, 10)).load()
    m = Downscaler.fit(ds.isel(time=slice(0, 8)), factor=3, steps=1, batch_size=4,
                       net={"kwargs": {"channels": [4, 4, 4], "groups": 2}})
    assert m.coder.periodic == ["longitude"] and m.coder.masked == [var]
    ens = m.downscale(coarsen(ds.isel(time=slice(8, 10)), 3), 2, steps=2)
    land = ds[var].isnull().all("time").values
    assert 0 < land.mean() < 1
    assert np.isnan(ens[var].values[..., land]).all() and np.isfinite(ens[var].values[..., ~land]).all()
    np.testing.assert_array_equal(ens["time"].values, ds["time"].values[8:])
    assert ens[var].attrs["units"] == "K" and ens[var].attrs["standard_name"] == ds[var].attrs["standard_name"]


def test_choose_setting_criteria_on_a_hand_made_table():
    """ssr: closest spread-skill; ssr+spectrum: least sum; ssr|spectrum: closest spread-skill among rows within
    the spectrum tolerance, the ssr+spectrum row when none is."""
    import pandas as pd

    from sciffusion.emulators.calibrate import choose_setting

    t = pd.DataFrame({"ssr": [0.98, 0.86, 0.77, 1.30], "high_k_error": [0.165, 0.056, -0.04, 0.01]})
    assert choose_setting(t, "ssr") == 0
    assert choose_setting(t, "ssr+spectrum") == 0  # 0.185 < 0.196 < 0.27 < 0.31
    assert choose_setting(t, "ssr|spectrum") == 1  # rows 1-3 within 10%: |0.86 - 1| is the least
    assert choose_setting(t, "ssr|spectrum", spectrum_tol=0.02) == 3  # only row 3 is within 2%
    assert choose_setting(t, "ssr|spectrum", spectrum_tol=0.001) == 0  # none: the ssr+spectrum row
    with pytest.raises(ValueError, match="criterion must be one of"):
        choose_setting(t, "crps")
    with pytest.raises(ValueError, match="complete validation fields"):
        choose_setting(t.assign(high_k_error=float("nan")), "ssr|spectrum")


@pytest.mark.parametrize("kw", [dict(method="stochastic", eta=0.5), dict(method="ddim", s_noise=1.05)])
def test_a_sampler_option_the_method_does_not_use_is_refused_not_dropped(model, kw, tmp_path):
    """eta with the stochastic sampler (or s_noise with DDIM) used to be dropped silently."""
    coarse = coarsen(sst(n_time=2, seed=3), FACTOR)
    with pytest.raises(TypeError, match="applies to method"):
        model.downscale(coarse, 2, steps=3, out=tmp_path / "x.zarr", **kw)
    assert not (tmp_path / "x.zarr").exists()
