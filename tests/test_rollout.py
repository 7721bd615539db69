"""Rollout and DYffusion: exact AR(1) statistics, bit-for-bit resume, stable members, bad inputs, save/load."""

import json

import numpy as np
import pytest
import torch
import xarray as xr

from sciffusion.emulators import DYffusion, Rollout
from sciffusion.emulators.rollout_base import RolloutCoder
from sciffusion.nets import PeriodicConv1d

A, S, INC = 0.8, 0.5, 0.7  # x(t+1) = A x(t) + S eps; increments normalised by INC


def ar1_coder(forcings=()):
    kw = {"forcing_mean": {f: 0.0 for f in forcings}, "forcing_std": {f: 1.0 for f in forcings}}
    return RolloutCoder(["x"], ["site"], [4], mean={"x": 0.0}, std={"x": 1.0}, inc_mean={"x": 0.0},
                        inc_std={"x": INC}, dt=1.0, forcings=forcings, grid={"site": [0, 1, 2, 3]}, **kw)


class AR1Denoiser:
    """Exact E[z0 | z] of the normalised increment z0 ~ N(mu, tau^2), mu = (A - 1) x / INC, tau = S / INC."""

    sigma_data = 1.0

    def __init__(self, fail_after=None, nan_at_call=None):
        self.calls, self.fail_after, self.nan_at_call = 0, fail_after, nan_at_call

    def __call__(self, z, sigma, cond=None):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("killed")
        mu = (A - 1) * cond[:, :1] / INC
        tau2 = (S / INC) ** 2
        out = mu + tau2 / (tau2 + sigma.reshape(-1, 1, 1) ** 2) * (z - mu)
        return out * np.nan if self.nan_at_call is not None and self.calls >= self.nan_at_call else out


def initial(value=2.0, n=4):
    return xr.Dataset({"x": ("site", np.full(n, value))}, coords={"site": np.arange(n)})


SAMPLER = {"steps": 128, "sigma_max": 80.0}  # start-noise bias ~ mu tau / sigma_max, Heun error ~ 1/steps


def test_ar1_rollout_matches_the_closed_form_mean_and_variance_at_every_lead():
    model = Rollout(AR1Denoiser(), ar1_coder(), sampler=SAMPLER)
    out = model.rollout(initial(2.0), 6, n_members=3000, progress=False, dtype=torch.float64)
    x = out.x.values.reshape(3000, 7, 4).transpose(1, 0, 2).reshape(7, -1)  # (lead, samples)
    for n in range(7):
        mean, var = 2.0 * A**n, S**2 * (1 - A ** (2 * n)) / (1 - A**2)
        se = np.sqrt(max(var, 1e-12) / x.shape[1])
        assert abs(x[n].mean() - mean) < 5 * se + 1e-12, (n, x[n].mean(), mean)
        assert abs(x[n].var() - var) <= 0.06 * var + 1e-12, (n, x[n].var(), var)
    assert out.x.dims == ("member", "time", "site") and list(out.time.values) == list(range(7))
    assert out.attrs["emulator"] == "sciffusion.emulators.Rollout" and out.attrs["seed"] == 0


def test_a_noise_temperature_scales_the_one_step_spread_and_leaves_the_mean():
    """sampler["temperature"] tau scales the starting draw: with the exact AR(1) denoiser and a fine ODE the
    one-step members' spread is tau times the plain one (the ODE map of a Gaussian is affine) and their
    mean stays; tau = 1 is the plain sampler bit for bit; a non-positive tau is refused, naming it."""
    plain = Rollout(AR1Denoiser(), ar1_coder(), sampler=SAMPLER)
    x1 = plain.rollout(initial(2.0), 1, n_members=3000, progress=False, dtype=torch.float64).x.values[:, 1]
    hot = Rollout(AR1Denoiser(), ar1_coder(), sampler={**SAMPLER, "temperature": 1.5})
    x15 = hot.rollout(initial(2.0), 1, n_members=3000, progress=False, dtype=torch.float64).x.values[:, 1]
    assert abs(x15.std() / x1.std() - 1.5) < 0.02 and abs(x15.mean() - x1.mean()) < 0.01
    one = Rollout(AR1Denoiser(), ar1_coder(), sampler={**SAMPLER, "temperature": 1.0})
    np.testing.assert_array_equal(one.rollout(initial(2.0), 1, n_members=4, progress=False).x.values,
                                  plain.rollout(initial(2.0), 1, n_members=4, progress=False).x.values)
    with pytest.raises(ValueError, match="temperature"):
        Rollout(AR1Denoiser(), ar1_coder(), sampler={"temperature": 0.0})


def test_member_k_is_the_same_draw_whatever_the_ensemble_size():
    model = Rollout(AR1Denoiser(), ar1_coder(), sampler={"steps": 6})
    small = model.rollout(initial(), 5, n_members=2, seed=3, progress=False).x.values
    large = model.rollout(initial(), 5, n_members=5, seed=3, progress=False).x.values
    np.testing.assert_array_equal(small, large[:2])
    assert not np.array_equal(large[0], large[1])


def test_resume_after_an_interrupted_write_equals_an_uninterrupted_rollout_bit_for_bit(tmp_path):
    full = Rollout(AR1Denoiser(), ar1_coder(), sampler={"steps": 4}).rollout(initial(), 10, n_members=3, seed=1,
                                                                              progress=False).x.values
    store = tmp_path / "r.zarr"
    killed = Rollout(AR1Denoiser(fail_after=7 * 7), ar1_coder(), sampler={"steps": 4})  # 7 NFE per step: dies in step 8
    with pytest.raises(KeyboardInterrupt):
        killed.rollout(initial(), 10, n_members=3, seed=1, out=store, chunk_steps=3, progress=False)
    import zarr

    assert json.loads(zarr.open_group(str(store), mode="r").attrs["sciffusion_completed_blocks"]) == [0, 3]  # times 0-5
    resumed = Rollout(AR1Denoiser(), ar1_coder(), sampler={"steps": 4})
    out = resumed.rollout(initial(), 10, n_members=3, seed=1, out=store, chunk_steps=3, mode="resume", progress=False)
    np.testing.assert_array_equal(out.x.values, full)
    assert resumed.denoiser.calls == 7 * 5  # only steps 5..9 were recomputed
    with pytest.raises(ValueError, match="seed"):
        resumed.rollout(initial(), 10, n_members=3, seed=2, out=store, mode="resume", progress=False)
    with pytest.raises(FileExistsError):
        resumed.rollout(initial(), 10, n_members=3, seed=1, out=store, progress=False)


def test_non_finite_states_stop_the_rollout_naming_the_step():
    model = Rollout(AR1Denoiser(nan_at_call=2 * 7 + 1), ar1_coder(), sampler={"steps": 4})
    with pytest.raises(FloatingPointError, match=r"step 3 \(time = 3.0\)"):
        model.rollout(initial(), 5, n_members=2, progress=False)


def test_forcings_that_do_not_cover_the_rollout_are_refused_naming_the_variable_and_the_range():
    model = Rollout(AR1Denoiser(), ar1_coder(forcings=["sst"]), sampler={"steps": 2})
    sst = xr.Dataset({"sst": ("time", np.zeros(6))}, coords={"time": np.arange(6.0)})
    with pytest.raises(ValueError, match=r"forcing 'sst' does not cover.*missing 6.0\.\.9.0 \(4 time"):
        model.rollout(initial(), 10, progress=False, forcings=sst)
    with pytest.raises(ValueError, match="pass forcings="):
        model.rollout(initial(), 3, progress=False)
    out = model.rollout(initial(), 5, progress=False, forcings=sst)  # covers t0 .. t0 + 4
    assert out.sizes["time"] == 6


def test_wrong_grid_or_variables_are_refused():
    model = Rollout(AR1Denoiser(), ar1_coder(), sampler={"steps": 2})
    with pytest.raises(ValueError, match="grid dimension 'site' has size 5, the model was trained on 4"):
        model.rollout(initial(n=5), 2, progress=False)
    with pytest.raises(ValueError, match=r"lacks variable\(s\) \['x'\]"):
        model.rollout(initial().rename(x="y"), 2, progress=False)
    with pytest.raises(ValueError, match="coordinate 'site' differs"):
        model.rollout(initial().assign_coords(site=np.arange(4) + 10), 2, progress=False)


def ar1_data(n_runs=4, n_times=60, n_sites=8, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((n_runs, n_times, n_sites))
    x[:, 0] = rng.normal(0, S / np.sqrt(1 - A**2), (n_runs, n_sites))
    for t in range(1, n_times):
        x[:, t] = A * x[:, t - 1] + S * rng.normal(size=(n_runs, n_sites))
    return xr.Dataset({"x": (("run", "time", "site"), x, {"units": "m"})},
                      coords={"time": np.arange(n_times) * 0.5, "site": np.arange(n_sites)})


NET = {"name": "PeriodicConv1d", "kwargs": {"width": 8, "n_blocks": 1}}


def test_fit_save_load_round_trip_gives_the_same_rollout(tmp_path):
    ds = ar1_data()
    model = Rollout.fit(ds, net=NET, steps=5, batch_size=16)
    assert model.coder.dt == 0.5 and model.coder.grid_dims == ["site"]
    assert abs(model.coder.inc_std["x"] - ds.x.diff("time").std()) < 1e-9
    model.denoiser.net.conv_out.weight.data.normal_()  # make the network matter
    init = ds.isel(run=0, time=0)
    a = model.rollout(init, 4, n_members=2, progress=False, steps=3)
    loaded = Rollout.load(model.save(tmp_path / "ckpt"))
    b = loaded.rollout(init, 4, n_members=2, progress=False, steps=3)
    np.testing.assert_array_equal(a.x.values, b.x.values)
    assert b.x.attrs["units"] == "m" and b.time.values[-1] == init.time.values + 2.0
    assert b.attrs["checkpoint_sha256"] and loaded.coder.to_dict() == model.coder.to_dict()
    with pytest.raises(ValueError, match="DYffusion.load"):
        Rollout.load(DYffusion.fit(ds, net=NET, horizon=2, steps=2, batch_size=8).save(tmp_path / "dy"))


def test_history_conditions_on_earlier_states():
    ds = ar1_data()
    model = Rollout.fit(ds, net=NET, steps=2, batch_size=16, history=2)
    assert model.coder.cond_channels == 2
    with pytest.raises(ValueError, match="history=2"):
        model.rollout(ds.isel(run=0, time=0), 2, progress=False)
    out = model.rollout(ds.isel(run=0, time=slice(0, 2)), 3, progress=False)
    assert out.time.values[0] == 0.5 and out.sizes["time"] == 4


def dyffusion_model(horizon=3, seed=0):
    torch.manual_seed(seed)
    nets = [PeriodicConv1d(1, cond_channels=1, width=8, n_blocks=1, dropout=0.3) for _ in range(2)]
    for net in nets:
        for p in net.parameters():
            p.data.normal_(0, 0.3)
    return DYffusion(*nets, ar1_coder(), horizon=horizon)


def test_dyffusion_interpolator_is_exact_at_the_window_ends_and_forecaster_keeps_shapes():
    model = dyffusion_model()
    z0, zh = torch.randn(5, 1, 4), torch.randn(5, 1, 4)
    assert torch.equal(model.interpolate(z0, zh, 0), z0) and torch.equal(model.interpolate(z0, zh, 3), zh)
    assert model.interpolate(z0, zh, 1).shape == (5, 1, 4)
    assert model.forecast(z0, z0, 0).shape == (5, 1, 4) and model.forecast(z0, z0, torch.arange(5) % 3).shape == (5, 1, 4)


def test_dyffusion_members_differ_through_dropout_and_are_stable_and_resumable(tmp_path):
    model = dyffusion_model()
    full = model.rollout(initial(0.5), 8, n_members=3, seed=4, progress=False).x.values
    assert not np.array_equal(full[0], full[1])
    alone = model.rollout(initial(0.5), 8, n_members=1, seed=4, progress=False).x.values  # same masks; batched
    np.testing.assert_allclose(alone, full[:1], rtol=0, atol=1e-4)  # float32 convolutions round differently
    deterministic = model.rollout(initial(0.5), 8, n_members=2, progress=False, stochastic=False).x.values
    np.testing.assert_array_equal(deterministic[0], deterministic[1])
    store = tmp_path / "dy.zarr"
    model.rollout(initial(0.5), 8, n_members=3, seed=4, out=store, chunk_steps=2, progress=False)
    import zarr

    zarr.open_group(str(store), mode="r+").attrs["sciffusion_completed_blocks"] = "[0, 2]"  # as if killed after time 3
    out = model.rollout(initial(0.5), 8, n_members=3, seed=4, out=store, chunk_steps=2, mode="resume", progress=False)
    np.testing.assert_array_equal(out.x.values, full)  # resumed from the window start at time 3
    loaded = DYffusion.load(model.save(tmp_path / "ckpt"))
    np.testing.assert_array_equal(loaded.rollout(initial(0.5), 8, n_members=3, seed=4, progress=False).x.values, full)


def test_dyffusion_fit_learns_a_window_and_rolls_out():
    ds = ar1_data(n_times=30)
    model = DYffusion.fit(ds, net=NET, horizon=2, steps=3, batch_size=8)
    out = model.rollout(ds.isel(run=0, time=0), 5, n_members=2, progress=False)
    assert out.sizes == {"member": 2, "time": 6, "site": 8} and np.isfinite(out.x.values).all()
    assert model.interpolator.config["dropout"] == 0.15


def test_cli_rolls_out_a_checkpoint_to_zarr_with_provenance_and_resumes(tmp_path, capsys):
    from sciffusion.cli import main

    ds = ar1_data()
    model = Rollout.fit(ds, net=NET, steps=2, batch_size=16)
    ckpt = model.save(tmp_path / "ckpt")
    from sciffusion.data import write_zarr

    write_zarr(ds, tmp_path / "data.zarr")
    args = ["rollout", str(ckpt), str(tmp_path / "data.zarr"), "-o", str(tmp_path / "out.zarr"), "--n-steps", "4",
            "--members", "2", "--select", "run=1", "time=3", "--sampler-steps", "2", "--no-progress"]
    assert main(args) == 0
    out = xr.open_zarr(tmp_path / "out.zarr")
    assert out.x.shape == (2, 5, 8) and out.time.values[0] == 1.5 and out.attrs["checkpoint_sha256"]
    np.testing.assert_array_equal(out.x.values[0, 0], ds.x.isel(run=1, time=3).values.astype(np.float32))
    assert main(args) != 0 and "exists" in capsys.readouterr().err  # refuses to overwrite
    assert main(args + ["--resume"]) == 0
    old = [a if a != "--n-steps" else "--steps" for a in args] + ["--overwrite"]  # the deprecated spelling, one release
    with pytest.warns(FutureWarning, match="--n-steps"):
        assert main(old) == 0
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "out.zarr").x.values, out.x.values)


@pytest.mark.parametrize("cls", [Rollout, DYffusion])
def test_models_trained_with_forcings_need_and_use_them(cls):
    ds = ar1_data(n_times=30)
    ds["f"] = ("time", np.sin(ds.time.values))
    model = cls.fit(ds, net=NET, forcings=["f"], steps=2, batch_size=8, **({"horizon": 2} if cls is DYffusion else {}))
    assert model.coder.forcings == ["f"] and model.coder.variables == ["x"]
    init = ds.isel(run=0, time=0)
    out = model.rollout(init, 6, forcings=ds[["f"]], progress=False, steps=2)
    assert out.sizes["time"] == 7 and "f" not in out
    with pytest.raises(ValueError, match=r"forcing 'f' does not cover the rollout.*missing 15.0\.\.15.0"):
        model.rollout(ds.isel(run=0, time=24), 7, forcings=ds[["f"]], progress=False, steps=2)


def test_a_static_forcing_field_without_time_applies_at_every_step():
    ds = ar1_data(n_times=20)
    ds["orography"] = ("site", np.linspace(0, 1, 8))
    model = Rollout.fit(ds, net=NET, forcings=["orography"], steps=2, batch_size=8)
    out = model.rollout(ds.isel(run=0, time=0), 30, forcings=ds[["orography"]], progress=False, steps=2)
    assert out.sizes["time"] == 31  # far beyond the training times: a static field always covers the rollout
