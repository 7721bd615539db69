"""Data layer: xarray <-> tensors, normalisation, zarr/netCDF I/O, condition/target pairs."""

import json

import dask
import dask.local
import numpy as np
import pytest
import torch
import xarray as xr

from sciffusion.data import (Normalizer, PairDataset, dataset_to_tensor, open_dataset,
                             tensor_to_dataset, write_netcdf, write_zarr)

GRID = ("lat", "lon")


def field_ds(n_time=6, n_member=3, seed=0):
    """u, v on (time, member, lat, lon) with CF attrs and coords; orog static on (lat, lon)."""
    rng = np.random.default_rng(seed)
    shape = (n_time, n_member, 4, 6)
    coords = {"time": np.datetime64("2020-01-01") + np.arange(n_time) * np.timedelta64(6, "h"),
              "member": np.arange(n_member), "lat": ("lat", np.linspace(-60, 60, 4),
                                                     {"units": "degrees_north"}),
              "lon": np.arange(0, 360, 60.0)}
    return xr.Dataset(
        {"u": (("time", "member", "lat", "lon"), rng.normal(3, 2, shape).astype("f4"),
               {"units": "m s-1", "long_name": "eastward wind", "standard_name": "eastward_wind"}),
         "v": (("time", "member", "lat", "lon"), rng.normal(-1, 5, shape).astype("f4"),
               {"units": "m s-1", "long_name": "northward wind"}),
         "orog": (GRID, rng.uniform(0, 1000, (4, 6)).astype("f4"), {"units": "m"})},
        coords=coords, attrs={"title": "toy", "source": "test"})


def index_ds(n_a=5, n_m=4, n_s=3):
    """Values encode their own positions: u[a, m, s] = 100 a + 10 m + s, on dims (init, member|time, site)."""
    a, m, s = np.meshgrid(np.arange(n_a), np.arange(n_m), np.arange(n_s), indexing="ij")
    return (100 * a + 10 * m + s).astype("f4")


# ---------------------------------------------------------------- tensors


def test_dataset_tensor_dataset_round_trip_keeps_values_coords_and_cf_attrs():
    ds = field_ds()
    t = dataset_to_tensor(ds, ["u", "v"], sample_dims=["time", "member"], grid_dims=GRID)
    assert t.shape == (18, 2, 4, 6) and t.dtype == torch.float32
    back = tensor_to_dataset(t, ["u", "v"], ds.coords, ["time", "member", *GRID], template=ds)
    xr.testing.assert_identical(back, ds[["u", "v"]])


def test_channels_follow_variables_and_batch_is_c_order_over_sample_dims():
    ds = field_ds()
    t = dataset_to_tensor(ds, ["v", "u"], sample_dims=["member", "time"], grid_dims=GRID)
    n = 2 * ds.sizes["time"] + 5  # member 2, time 5
    np.testing.assert_array_equal(t[n, 0].numpy(), ds.v.isel(member=2, time=5).values)
    np.testing.assert_array_equal(t[n, 1].numpy(), ds.u.isel(member=2, time=5).values)


def test_static_variable_is_broadcast_over_sample_dims():
    ds = field_ds()
    t = dataset_to_tensor(ds, ["u", "orog"], sample_dims=["time", "member"], grid_dims=GRID)
    assert torch.equal(t[0, 1], t[-1, 1])
    np.testing.assert_array_equal(t[7, 1].numpy(), ds.orog.values)


def test_tensor_to_dataset_infers_one_sample_dim_and_adds_provenance_attrs():
    ds = field_ds()
    t = torch.zeros(5, 1, 4, 6)
    out = tensor_to_dataset(t, ["u"], ds.drop_vars("member").coords, ["member", *GRID],
                            template=ds, attrs={"seed": 3})
    assert out.sizes["member"] == 5 and "time" not in out.coords
    assert out.u.attrs["units"] == "m s-1" and out.attrs["seed"] == 3
    assert out.attrs["title"] == "toy" and out.lat.attrs["units"] == "degrees_north"


def test_tensor_to_dataset_refuses_coords_that_contradict_the_batch_size():
    ds = field_ds()  # 3 members
    with pytest.raises(ValueError, match="N = 5 does not equal .*'member': 3"):
        tensor_to_dataset(torch.zeros(5, 1, 4, 6), ["u"], ds.coords, ["member", *GRID])
    with pytest.raises(ValueError, match="coordinate 'lon' has 3 values"):
        tensor_to_dataset(torch.zeros(3, 1, 4, 6), ["u"], {"lon": [0, 1, 2]},
                          ["member", *GRID])


def test_variable_with_unlisted_dim_is_an_error_naming_it():
    ds = field_ds()
    with pytest.raises(ValueError, match=r"variable 'u' has dimension\(s\) \['member'\]"):
        dataset_to_tensor(ds, ["u"], sample_dims=["time"], grid_dims=GRID)


# ---------------------------------------------------------------- I/O


@pytest.mark.parametrize("suffix, writer", [(".zarr", write_zarr), (".nc", write_netcdf)])
def test_write_then_open_is_identical_and_leaves_no_temporaries(tmp_path, suffix, writer):
    ds = field_ds()
    path = tmp_path / f"out{suffix}"
    writer(ds, path)
    with open_dataset(path) as back:
        assert isinstance(back.u.data, dask.array.Array)  # opened lazily
        xr.testing.assert_identical(back.load(), ds)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("suffix, writer", [(".zarr", write_zarr), (".nc", write_netcdf)])
def test_default_mode_refuses_to_overwrite_and_w_replaces(tmp_path, suffix, writer):
    path = tmp_path / f"out{suffix}"
    writer(field_ds(seed=0), path)
    with pytest.raises(FileExistsError, match="out"):
        writer(field_ds(seed=1), path)
    writer(field_ds(seed=1), path, mode="w")
    with open_dataset(path) as back:
        xr.testing.assert_identical(back.load(), field_ds(seed=1))
    assert len(list(tmp_path.iterdir())) == 1


def test_netcdf_can_overwrite_the_file_it_was_lazily_opened_from(tmp_path):
    path = tmp_path / "x.nc"
    write_netcdf(field_ds(), path)
    with open_dataset(path) as ds:
        write_netcdf(ds * 2, path, mode="w")
    with open_dataset(path) as back:
        np.testing.assert_allclose(back.u.values, 2 * field_ds().u.values)


def test_netcdf_stores_non_netcdf_attrs_as_json_text(tmp_path):
    ds = field_ds().assign_attrs(provenance={"steps": 18}, flag=True)
    write_netcdf(ds, tmp_path / "p.nc")
    with open_dataset(tmp_path / "p.nc") as back:
        assert json.loads(back.attrs["provenance"]) == {"steps": 18}


def test_zarr_append_passes_through_and_extends_the_store(tmp_path):
    ds, path = field_ds(), tmp_path / "a.zarr"
    write_zarr(ds.isel(time=slice(0, 4)), path)
    write_zarr(ds.isel(time=slice(4, None)), path, append_dim="time")
    with open_dataset(path) as back:
        xr.testing.assert_identical(back.load(), ds)


def test_zarr_chunks_are_applied_on_write(tmp_path):
    path = tmp_path / "c.zarr"
    write_zarr(field_ds(), path, chunks={"time": 2, "member": -1})
    with open_dataset(path) as back:
        assert back.u.chunks[:2] == ((2, 2, 2), (3,))


def test_open_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.zarr"):
        open_dataset(tmp_path / "nowhere.zarr")


def test_open_unknown_format_is_an_error(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unknown dataset format .*data.csv"):
        open_dataset(tmp_path / "data.csv")


# ---------------------------------------------------------------- normalisation


def _with_nans(ds):
    u = ds.u.values.copy()
    u[0, 0, :2, :3] = np.nan
    return ds.assign(u=(ds.u.dims, u, ds.u.attrs))


def test_normalizer_stats_equal_numpy_nanmean_nanstd():
    ds = _with_nans(field_ds())
    norm = Normalizer.fit(ds, ["u", "v"])
    np.testing.assert_allclose(norm.mean["u"], np.nanmean(ds.u.values.astype("f8")), rtol=1e-12)
    np.testing.assert_allclose(norm.std["u"], np.nanstd(ds.u.values.astype("f8")), rtol=1e-12)
    np.testing.assert_allclose(norm.std["v"], np.std(ds.v.values.astype("f8")), rtol=1e-12)


def test_normalizer_keeps_unreduced_dims_per_grid_point():
    ds = field_ds()
    norm = Normalizer.fit(ds, ["u"], dims=["time", "member"])
    assert norm.dims["u"] == ["lat", "lon"]
    np.testing.assert_allclose(norm.mean["u"], ds.u.values.astype("f8").mean(axis=(0, 1)))
    t = dataset_to_tensor(ds, ["u"], grid_dims=GRID, dtype=torch.float64)
    z = norm.encode(t, ["u"])
    np.testing.assert_allclose(z.mean(0).numpy(), 0, atol=1e-12)


def test_encode_decode_are_inverse_and_encode_standardises():
    ds = field_ds()
    norm = Normalizer.fit(ds, ["u", "v"])
    t = dataset_to_tensor(ds, ["v", "u"], grid_dims=GRID, dtype=torch.float64)
    z = norm.encode(t, ["v", "u"])
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(z.std(dim=(0, 2, 3), correction=0), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(norm.decode(z, ["v", "u"]), t)


def test_normalizer_json_round_trip_encodes_identically():
    norm = Normalizer.fit(field_ds(), ["u", "v", "orog"])
    clone = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    t = torch.randn(2, 3, 4, 6)
    assert torch.equal(clone.encode(t, ["u", "v", "orog"]), norm.encode(t, ["u", "v", "orog"]))


def test_zero_std_variable_is_an_error_naming_it():
    ds = field_ds().assign(const=(GRID, np.full((4, 6), 7.0)))
    with pytest.raises(ValueError, match="'const' has zero"):
        Normalizer.fit(ds, ["u", "const"])


def test_normalizer_missing_variable_lists_available():
    with pytest.raises(ValueError, match=r"\['w'\] not found.*orog"):
        Normalizer.fit(field_ds(), ["w"])
    with pytest.raises(ValueError, match="statistics for variable.*'w'"):
        Normalizer.fit(field_ds(), ["u"]).encode(torch.zeros(1, 1, 4, 6), ["w"])


def test_fit_keeps_dask_input_lazy_and_computes_once():
    ds = field_ds().chunk({"time": 2})
    calls = []

    def counting_scheduler(dsk, keys, **kwargs):
        calls.append(len(keys) if isinstance(keys, list) else 1)
        return dask.local.get_sync(dsk, keys, **kwargs)

    with dask.config.set(scheduler=counting_scheduler):
        norm = Normalizer.fit(ds, ["u", "v", "orog"])
    assert len(calls) == 1  # all means and stds in one pass
    assert isinstance(ds.u.data, dask.array.Array)  # the input is not loaded in place
    np.testing.assert_allclose(norm.mean["v"], field_ds().v.values.astype("f8").mean())


# ---------------------------------------------------------------- pairs


def time_pairs_ds():
    """u[member, time, site] = 100 member + 10 time + site."""
    return xr.Dataset({"u": (("member", "time", "site"), index_ds(2, 6, 3), {"units": "K"})},
                      coords={"time": np.arange(6) * 3.0})


def test_time_offset_pairs_match_hand_computed_indices():
    p = PairDataset(time_pairs_ds(), ["u"], grid_dims=["site"], along="time", offset=2, history=1)
    # valid t in [1, 6 - 2) -> 3 pairs per member; item 4 = member 1, t = 2
    assert len(p) == 6 and p.channels == 1 and p.cond_channels == 2
    assert p.index(4) == {"sample": {"member": 1}, "cond": [1, 2], "target": 4}
    item = p[4]
    torch.testing.assert_close(item["x"], torch.tensor([[140.0, 141, 142]]))
    torch.testing.assert_close(item["cond"], torch.tensor([[110.0, 111, 112], [120, 121, 122]]))
    assert item["x"].dtype == torch.float32 and set(item) == {"x", "cond"}


def test_member_pairs_take_seeds_as_condition_and_other_members_as_targets():
    ds = xr.Dataset({"u": (("init_time", "member", "site"), index_ds(3, 4, 2))},
                    coords={"init_time": np.arange(3)})
    p = PairDataset(ds, ["u"], grid_dims=["site"], along="member", n_seeds=2)
    # 3 init times x 2 non-seed members; item 3 = init_time 1, target member 3
    assert len(p) == 6 and p.cond_channels == 2
    assert p.index(3) == {"sample": {"init_time": 1}, "cond": [0, 1], "target": 3}
    item = p[3]
    torch.testing.assert_close(item["x"], torch.tensor([[130.0, 131]]))
    torch.testing.assert_close(item["cond"], torch.tensor([[100.0, 101], [110, 111]]))


def test_pairs_apply_normalizer_and_append_static_channels():
    ds = field_ds()
    norm = Normalizer.fit(ds, ["u", "v", "orog"])
    p = PairDataset(ds, ["u", "v"], grid_dims=GRID, along="time", static=["orog"], normalizer=norm)
    assert p.cond_channels == 3 and p.sample_dims == ["member"]
    raw = dataset_to_tensor(ds.isel(member=[0], time=[1]), ["u", "v"], grid_dims=GRID)
    torch.testing.assert_close(p[0]["x"], norm.encode(raw, ["u", "v"])[0])
    orog = (ds.orog.values - norm.mean["orog"]) / norm.std["orog"]
    np.testing.assert_allclose(p[0]["cond"][2].numpy(), orog, rtol=1e-5)


def test_pairs_read_only_the_needed_variables_and_leave_the_input_lazy():
    def unreadable(block):
        raise AssertionError("an unused variable was computed")

    ds = field_ds().chunk({"time": 2})
    ds["unused"] = ds.u.copy(data=ds.u.data.map_blocks(unreadable, dtype="f4"))
    p = PairDataset(ds, ["u"], grid_dims=GRID, along="time")
    assert len(p) == 5 * 3 and isinstance(ds.u.data, dask.array.Array)


def test_pairs_batch_through_a_dataloader():
    p = PairDataset(field_ds(), ["u"], grid_dims=GRID, along="member", n_seeds=1)
    batch = next(iter(torch.utils.data.DataLoader(p, batch_size=4)))
    assert batch["x"].shape == (4, 1, 4, 6) and batch["cond"].shape == (4, 1, 4, 6)


def test_missing_values_need_allow_missing_then_give_a_mask():
    ds = _with_nans(field_ds())
    with pytest.raises(ValueError, match="variable 'u' has 6 NaN"):
        PairDataset(ds, ["u", "v"], grid_dims=GRID, along="time")
    p = PairDataset(ds, ["u", "v"], grid_dims=GRID, along="time", allow_missing=True)
    item = p[0]  # cond at time 0 holds the NaNs; target at time 1 has none
    assert torch.equal(item["mask"], torch.ones_like(item["x"]))
    assert torch.isfinite(item["cond"]).all() and item["cond"][0, :2, :3].eq(0).all()
    target = PairDataset(ds, ["u"], grid_dims=GRID, along="member", n_seeds=1,
                         allow_missing=True)[0]  # time 0, member 1: mask = 1 everywhere
    assert target["mask"].all()
    masked = PairDataset(ds.isel(member=[1, 0]), ["u"], grid_dims=GRID, along="member",
                         n_seeds=1, allow_missing=True)[0]
    assert masked["mask"].sum() == 24 - 6 and masked["x"][masked["mask"] == 0].eq(0).all()


def test_missing_variable_error_names_it_and_lists_available():
    with pytest.raises(ValueError, match=r"target variable 'w' not found.*orog, u, v"):
        PairDataset(field_ds(), ["w"], grid_dims=GRID)
    with pytest.raises(ValueError, match="static variable 'sst' not found"):
        PairDataset(field_ds(), ["u"], grid_dims=GRID, static=["sst"])


def test_missing_dimension_error_names_it():
    with pytest.raises(ValueError, match="'lead_time' not found"):
        PairDataset(field_ds(), ["u"], grid_dims=GRID, along="lead_time")
    with pytest.raises(ValueError, match="'x' not found"):
        PairDataset(field_ds(), ["u"], grid_dims=["lat", "x"])


def test_non_monotonic_time_error_names_the_dim():
    ds = field_ds().isel(time=[0, 2, 1, 3])
    with pytest.raises(ValueError, match="coordinate 'time' is not strictly increasing"):
        PairDataset(ds, ["u"], grid_dims=GRID, along="time")


def test_condition_and_target_grids_that_differ_name_dims_and_sizes():
    ds = field_ds().assign(coarse=(("time", "member", "y", "x"), np.ones((6, 3, 2, 3), "f4")))
    with pytest.raises(ValueError, match="'y' has size 2 but target dim 'lat' has size 4"):
        PairDataset(ds, ["u"], grid_dims=GRID, cond_variables=["coarse"],
                    cond_grid_dims=["y", "x"])


def test_too_few_steps_or_members_are_clear_errors():
    with pytest.raises(ValueError, match="'time' has 6 steps"):
        PairDataset(field_ds(), ["u"], grid_dims=GRID, offset=4, history=2)
    with pytest.raises(ValueError, match="none left as targets"):
        PairDataset(field_ds(), ["u"], grid_dims=GRID, along="member", n_seeds=3)
