"""Physics ensembles: layout, stable member seeds, zarr round trip, resume after a kill."""

import json

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from sciffusion.data import open_dataset

from sciffusion.systems import DarcyFlow, KolmogorovFlow, Lorenz96, lorenz96_forecast_model, simulate

L96 = {"n_members": 3, "n_init": 3, "n_leads": 4, "spinup": 1.0, "seed": 5}


class Killed(Exception):
    pass


def die(chunk):
    raise Killed


def test_lorenz96_ensemble_layout_coordinates_and_cf_attributes():
    ds = simulate(Lorenz96(), **L96)
    assert ds["x"].dims == ("init_time", "lead_time", "member", "k")
    assert ds["x_truth"].dims == ("init_time", "lead_time", "k")
    assert ds.sizes == {"init_time": 3, "lead_time": 5, "member": 3, "k": 40}
    np.testing.assert_allclose(ds.lead_time, [0, 0.05, 0.1, 0.15, 0.2])
    np.testing.assert_allclose(ds.init_time, [0, 0.2, 0.4])  # default init_interval = n_leads * lead_interval
    np.testing.assert_allclose(ds.valid_time.values, ds.init_time.values[:, None] + ds.lead_time.values[None])
    assert ds.lead_time.attrs["standard_name"] == "forecast_period"
    assert ds.attrs["Conventions"] == "CF-1.8"
    assert json.loads(ds.attrs["sciffusion_config"])["members"] == 3


def test_truth_continues_across_inits_and_members_start_perturbed_from_it():
    ds = simulate(Lorenz96(), **L96)
    # init i+1 is the truth run continued from init i (init_interval = the lead span)
    np.testing.assert_allclose(ds.x_truth[1, 0], ds.x_truth[0, -1], atol=1e-12)
    spread = (ds.x.isel(lead_time=0) - ds.x_truth.isel(lead_time=0)).std()
    assert 0.07 < float(spread) < 0.13  # default perturbation 0.1
    assert float(abs(ds.x - ds.x_truth).isel(lead_time=-1).mean()) > float(abs(ds.x - ds.x_truth).isel(lead_time=0).mean())


def test_member_k_is_the_same_draw_whatever_the_ensemble_size():
    model = lorenz96_forecast_model(forcing_error=0.5, noise_std=0.3)
    small = simulate(Lorenz96(), forecast_system=model, **{**L96, "n_members": 2})
    big = simulate(Lorenz96(), forecast_system=model, **{**L96, "n_members": 4})
    xr.testing.assert_identical(small.x, big.x.isel(member=slice(0, 2)))


def test_zarr_round_trip_keeps_coordinates_attributes_and_values(tmp_path):
    mem = simulate(KolmogorovFlow(n=16), n_members=2, n_init=2, n_leads=2, spinup=0.5, lead_interval=0.1)
    disk = simulate(KolmogorovFlow(n=16), n_members=2, n_init=2, n_leads=2, spinup=0.5, lead_interval=0.1,
                    out=tmp_path / "kf.zarr")
    back = xr.open_zarr(tmp_path / "kf.zarr", consolidated=False)
    xr.testing.assert_identical(disk.load(), mem)
    xr.testing.assert_identical(back.load(), mem)
    assert back.vorticity.attrs["standard_name"] == "atmosphere_relative_vorticity"
    assert back.x.attrs["axis"] == "X"
    assert back.vorticity.encoding["chunks"] == (1, 3, 2, 16, 16)  # one init per chunk, members whole


def test_killed_run_resumes_without_recomputing_finished_chunks(tmp_path):
    store = tmp_path / "l96.zarr"
    full = simulate(Lorenz96(), **L96)
    computed = []

    def die_after_first(c):
        computed.append(c)
        if len(computed) == 1:
            raise Killed

    with pytest.raises(Killed):
        simulate(Lorenz96(), out=store, on_chunk=die_after_first, **L96)
    with pytest.raises(FileExistsError, match="exists"):
        simulate(Lorenz96(), out=store, **L96)
    computed.clear()
    resumed = simulate(Lorenz96(), out=store, mode="resume", on_chunk=computed.append, **L96)
    assert computed == [1, 2]  # chunk 0 was not recomputed
    xr.testing.assert_identical(resumed.load(), full)  # bit for bit


def test_resume_with_different_settings_is_refused_naming_them(tmp_path):
    store = tmp_path / "l96.zarr"
    simulate(Lorenz96(), out=store, **L96)
    with pytest.raises(ValueError, match=r"members: stored 3, now 4; seed: stored 5, now 6.*--overwrite"):
        simulate(Lorenz96(), out=store, mode="resume", **{**L96, "n_members": 4, "seed": 6})
    again = simulate(Lorenz96(), out=store, mode="w", **{**L96, "n_members": 4})
    assert again.sizes["member"] == 4


def test_darcy_samples_stream_in_member_chunks_and_resume(tmp_path):
    store = tmp_path / "darcy.zarr"
    done = []

    def die_after_two(c):
        done.append(c)
        if len(done) == 2:
            raise Killed

    with pytest.raises(Killed):
        simulate(DarcyFlow(n=12), n_members=10, chunk_members=4, out=store, on_chunk=die_after_two)
    done.clear()
    ds = simulate(DarcyFlow(n=12), n_members=10, chunk_members=4, out=store, mode="resume", on_chunk=done.append)
    assert done == [2]
    a, u = DarcyFlow(n=12).sample(10)
    np.testing.assert_array_equal(ds.a.values, a)
    np.testing.assert_array_equal(ds.u.values, u)
    assert ds.a.dims == ("member", "y", "x")


@pytest.mark.parametrize("kwargs,needle", [({"n_members": 0}, "n_members"), ({"lead_interval": 0.07}, "lead_interval"),
                                           ({"mode": "append"}, "mode")])
def test_bad_arguments_raise_errors_naming_them(tmp_path, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        simulate(Lorenz96(), **{**L96, "out": tmp_path / "x.zarr", **kwargs})


def test_equal_shaped_fields_are_kept_apart_in_memory_and_on_disk(tmp_path):
    """Two-level L96 with J=1 has x and y of the same shape: each must hold its own values."""
    system = Lorenz96(k=8, j=1, dt=0.005)
    kw = {"n_members": 2, "n_leads": 2, "lead_interval": 0.01, "spinup": 0.5}
    mem = simulate(system, **kw)
    assert not np.allclose(mem.x.values, mem.y.values)
    assert not np.allclose(mem.x_truth.values, mem.y_truth.values)
    disk = simulate(system, out=tmp_path / "two.zarr", **kw).load()
    xr.testing.assert_identical(disk, mem)


def test_completion_record_stays_out_of_the_data_in_memory_on_disk_and_after_a_kill(tmp_path):
    store = tmp_path / "l96.zarr"
    assert "chunk_done" not in simulate(Lorenz96(), **L96)
    with pytest.raises(Killed):
        simulate(Lorenz96(), out=store, on_chunk=die, **L96)
    assert "chunk_done" not in xr.open_zarr(store, consolidated=False)
    assert json.loads(xr.open_zarr(store, consolidated=False).attrs["sciffusion_completed_blocks"]) == [0]
    done = simulate(Lorenz96(), out=store, mode="resume", **L96)
    for ds in (done, xr.open_zarr(store), open_dataset(store)):
        assert set(ds.data_vars) == {"x", "x_truth"}
        assert "sciffusion_completed_blocks" not in ds.attrs


def test_store_flagged_by_the_old_chunk_done_variable_resumes_its_missing_chunks(tmp_path):
    """Stores written before the completion record moved to the attributes still resume."""
    store = tmp_path / "old.zarr"
    full = simulate(Lorenz96(), **L96)
    with pytest.raises(Killed):
        simulate(Lorenz96(), out=store, on_chunk=die, **L96)
    attrs = dict(zarr.open_group(str(store), mode="r").attrs)
    del attrs["sciffusion_completed_blocks"]
    old_flags = xr.Dataset({"chunk_done": ("init_time", np.array([1, 0, 0], "int8"))}, attrs=attrs)
    old_flags.to_zarr(store, mode="a", consolidated=False)
    assert "sciffusion_completed_blocks" not in zarr.open_group(str(store), mode="r").attrs
    computed = []
    resumed = simulate(Lorenz96(), out=store, mode="resume", on_chunk=computed.append, **L96)
    assert computed == [1, 2]
    xr.testing.assert_identical(resumed.load(), full)
    assert "chunk_done" not in open_dataset(store)


def test_spin_up_initial_states_and_chunks_show_progress_only_when_asked(capsys):
    kw = {"n_members": 2, "n_init": 2, "n_leads": 1, "spinup": 0.5, "lead_interval": 0.1}
    simulate(KolmogorovFlow(n=16), progress=True, **kw)
    err = capsys.readouterr().err
    assert "kolmogorov spin-up" in err and "initial states" in err and "kolmogorov ensemble" in err
    simulate(KolmogorovFlow(n=16), progress=False, **kw)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("system", [KolmogorovFlow(n=16), lorenz96_forecast_model(forcing_error=0.5, noise_std=0.3)])
def test_advance_in_pieces_equals_one_step_call_bit_for_bit(system):
    """The spin-up runs in pieces for its progress bar; the state is the same as without them."""
    x = system.initial_state(2, torch.Generator().manual_seed(0))
    calls = []
    pieces = system.advance(x, 250, generator=torch.Generator().manual_seed(1), callback=calls.append)
    if isinstance(system, KolmogorovFlow):
        whole = torch.fft.irfft2(system.step_hat(torch.fft.rfft2(x) * system.mask, 250), s=(16, 16))
    else:
        whole = system.step(x, 250, generator=torch.Generator().manual_seed(1))
    assert torch.equal(pieces, whole)
    assert sum(calls) == 250 and len(calls) > 50
