"""Input/output types, dask laziness, Datasets, reductions and error messages."""

import warnings

import dask
import numpy as np
import pytest
import torch
import xarray as xr

import sciffusion.metrics as sm


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    fc = xr.DataArray(
        rng.standard_normal((6, 4, 5, 8)).astype(np.float32), dims=("member", "time", "lat", "lon"),
        coords={"lat": np.linspace(-60, 60, 5), "lon": np.arange(8) * 45.0, "time": np.arange(4)},
    )
    ob = (fc.isel(member=0, drop=True) * 0.5 + 0.2).rename("t2m")
    return fc, ob


class _CountingScheduler:
    """A dask scheduler that counts how often it is asked to compute."""

    def __init__(self):
        self.calls = 0

    def __call__(self, dsk, keys, **kwargs):
        self.calls += 1
        return dask.get(dsk, keys, **kwargs)


@pytest.mark.parametrize("fair", [False, True])
def test_dask_stays_lazy_and_matches_eager(data, fair):
    fc, ob = data
    w = sm.latitude_weights(fc)
    eager = sm.crps_ensemble(fc, ob, fair=fair, reduce_dims=["lat", "lon"], weights=w)
    sched = _CountingScheduler()
    with dask.config.set(scheduler=sched):
        lazy = sm.crps_ensemble(fc.chunk(time=1), ob.chunk(time=2), fair=fair,
                                reduce_dims=["lat", "lon"], weights=w)
        assert sched.calls == 0 and lazy.chunks is not None
        np.testing.assert_allclose(lazy.values, eager.values, rtol=1e-6)
    assert lazy.dtype == np.float32


def test_split_member_dim_is_rechunked_with_warning(data):
    fc, ob = data
    with pytest.warns(UserWarning, match="member dimension 'member' is split across 3 dask chunks"):
        res = sm.crps_ensemble(fc.chunk(member=2), ob)
    np.testing.assert_allclose(res.values, sm.crps_ensemble(fc, ob).values, rtol=1e-6)


@pytest.mark.parametrize("name", ["rmse", "bias", "spread_skill_ratio", "rank_histogram", "energy_score"])
def test_other_metrics_are_lazy_on_dask(data, name):
    fc, ob = data
    fn = getattr(sm, name)
    sched = _CountingScheduler()
    with dask.config.set(scheduler=sched):
        lazy = fn(fc.chunk(time=2), ob.chunk(time=2), reduce_dims=["time", "lon"])
        assert sched.calls == 0
    np.testing.assert_allclose(lazy.values, fn(fc, ob, reduce_dims=["time", "lon"]).values, rtol=1e-6)


def test_numpy_and_torch_round_trip(data):
    fc, ob = data
    ref = sm.crps_ensemble(fc, ob, reduce_dims=["lat", "lon"]).values
    out_np = sm.crps_ensemble(fc.values, ob.values, reduce_dims=[1, 2])
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    np.testing.assert_allclose(out_np, ref)
    out_t = sm.crps_ensemble(torch.from_numpy(fc.values), torch.from_numpy(ob.values), reduce_dims=[-2, -1])
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_allclose(out_t.numpy(), ref)
    w = np.cos(np.deg2rad(fc.lat.values))[:, None] * np.ones(8)
    np.testing.assert_allclose(
        sm.crps_ensemble(fc.values, ob.values, reduce_dims=[1, 2], weights=w),
        sm.crps_ensemble(fc, ob, reduce_dims=["lat", "lon"], weights=xr.DataArray(w, dims=("lat", "lon"))),
        rtol=1e-6)
    member_last = np.moveaxis(fc.values, 0, -1)
    np.testing.assert_allclose(sm.crps_ensemble(member_last, ob.values, member_dim=-1), sm.crps_ensemble(fc, ob))


def test_raw_dask_array_stays_lazy(data):
    import dask.array as da

    fc, ob = data
    lazy = sm.crps_ensemble(da.from_array(fc.values, chunks=(6, 1, 5, 8)), da.from_array(ob.values, chunks=(1, 5, 8)),
                            fair=True, reduce_dims=[1, 2])
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), sm.crps_ensemble(fc, ob, fair=True, reduce_dims=["lat", "lon"]),
                               rtol=1e-6)


def test_dataset_in_dataset_out(data):
    fc, ob = data
    ds_f = xr.Dataset({"t2m": fc, "u10": 2 * fc})
    ds_o = xr.Dataset({"t2m": ob, "u10": 2 * ob})
    res = sm.crps_ensemble(ds_f, ds_o, reduce_dims="all")
    assert isinstance(res, xr.Dataset) and set(res.data_vars) == {"t2m", "u10"}
    assert float(res.u10) == pytest.approx(2 * float(res.t2m), rel=1e-6)
    with pytest.raises(KeyError, match="'u10' is in the forecast but missing from the observation"):
        sm.crps_ensemble(ds_f, ds_o[["t2m"]])


def test_reduce_dims_none_keeps_all_and_all_reduces_all(data):
    fc, ob = data
    assert sm.crps_ensemble(fc, ob).dims == ("time", "lat", "lon")
    assert sm.crps_ensemble(fc, ob, reduce_dims="all").dims == ()
    assert sm.brier_score(fc, ob, [0.0, 1.0], reduce_dims="all").dims == ("threshold",)
    assert sm.rank_histogram(fc, ob, reduce_dims="all").dims == ("rank",)


def test_clear_errors(data):
    fc, ob = data
    with pytest.raises(ValueError, match="no member dimension 'ens'"):
        sm.crps_ensemble(fc, ob, member_dim="ens")
    with pytest.raises(ValueError, match="coordinate 'lat' differs"):
        sm.crps_ensemble(fc, ob.assign_coords(lat=ob.lat + 1))
    with pytest.raises(ValueError, match="dimension 'lon' has size 8 vs 7"):
        sm.crps_ensemble(fc, ob.isel(lon=slice(0, 7)))
    with pytest.raises(ValueError, match=r"reduce_dims \['height'\] not found"):
        sm.crps_ensemble(fc, ob, reduce_dims=["height"])
    with pytest.raises(ValueError, match="weights were given but reduce_dims is None"):
        sm.crps_ensemble(fc, ob, weights=sm.latitude_weights(fc))
    with pytest.raises(ValueError, match="observation shape"):
        sm.crps_ensemble(fc.values, ob.values[:, :3])
    with pytest.raises(ValueError, match="observation has the member dimension"):
        sm.crps_ensemble(fc, fc)


def test_no_warnings_on_nan_inputs(data):
    fc, ob = data
    fc = fc.where(fc > 1.5)  # many NaN members, some all-NaN points
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = sm.crps_ensemble(fc, ob, fair=True)
    assert np.isnan(res.values).any() and np.isfinite(res.values).any()


def test_latitude_weights():
    lat = np.array([-90.0, -45, 0, 45, 90])
    cos = sm.latitude_weights(lat, "cos")
    area = sm.latitude_weights(lat, "area")
    np.testing.assert_allclose(cos.mean(), 1.0)
    np.testing.assert_allclose(area.mean(), 1.0)
    # cells [-90,-67.5], [-67.5,-22.5], [-22.5,22.5], ...: area share sin(e+) - sin(e-)
    edges = np.deg2rad([-90, -67.5, -22.5, 22.5, 67.5, 90])
    raw = np.diff(np.sin(edges))
    np.testing.assert_allclose(area, raw / raw.mean())
    assert cos[0] == pytest.approx(0.0, abs=1e-12) and area[0] > 0  # polar cap keeps its area
    da = xr.DataArray(np.zeros((5, 3)), dims=("latitude", "x"), coords={"latitude": lat})
    w = sm.latitude_weights(da)
    assert w.dims == ("latitude",)
    with pytest.raises(ValueError, match="within"):
        sm.latitude_weights(np.array([0.0, 100.0]))
