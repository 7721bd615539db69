"""One vocabulary: ``n_members``, ``out``, ``mode``. Each old keyword still works for one release, gives
the same result, and warns with a FutureWarning naming the new one; giving both raises TypeError."""

import numpy as np
import pytest
import torch
import xarray as xr

from sciffusion._deprecate import renamed, renamed_keywords
from sciffusion.emulators import EnsembleEmulator
from sciffusion.emulators.pretrain import lorenz96_ensembles
from sciffusion.inverse import Linear, sample
from sciffusion.inverse.smc import twisted_smc
from sciffusion.recipes import sample_from_checkpoint, sampling_plan
from sciffusion.systems import DarcyFlow, Lorenz96, simulate
from sciffusion.systems.ensemble import IF_EXISTS
from sciffusion.testing import grid_mixture

from test_emulator_ensemble import gaussian_emulator, seeds_dataset

L96 = {"n_init": 2, "n_leads": 2, "spinup": 0.5, "seed": 3, "progress": False}


def test_renamed_moves_the_value_warns_naming_the_new_keyword_and_refuses_both():
    kwargs = {"num_samples": 4}
    with pytest.warns(FutureWarning, match=r"f: num_samples= is deprecated, use n_members="):
        renamed(kwargs, "num_samples", "n_members", "f")
    assert kwargs == {"n_members": 4}
    with pytest.raises(TypeError, match="both"):
        renamed({"num_samples": 4, "n_members": 4}, "num_samples", "n_members", "f")

    @renamed_keywords(old=("new", {"a": "x"}))
    def f(*, new="y"):
        return new

    assert f() == "y" and f(new="z") == "z"
    with pytest.warns(FutureWarning, match="old= is deprecated, use new="):
        assert f(old="a") == "x"
    with pytest.raises(ValueError, match="old must be one of"), pytest.warns(FutureWarning):
        f(old="b")


def test_inverse_sample_num_samples_is_n_members():
    prior, a = grid_mixture(2), torch.eye(2, dtype=torch.float64)[:1]
    kw = dict(noise_std=0.5, guidance="pigdm", steps=4, sigma_max=50.0, dtype=torch.float64)
    y = torch.tensor([0.3], dtype=torch.float64)
    new = sample(prior, Linear(a), y, n_members=3, generator=torch.Generator().manual_seed(0), **kw)
    with pytest.warns(FutureWarning, match="num_samples= is deprecated, use n_members="):
        old = sample(prior, Linear(a), y, num_samples=3, generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(old, new, rtol=0, atol=0)
    with pytest.raises(TypeError, match="n_members"):
        sample(prior, Linear(a), y, num_samples=3, n_members=3, **kw)
    with pytest.raises(TypeError, match="n_members"):
        twisted_smc(prior, None, torch.ones(2), num_samples=2, n_members=2)


def test_simulate_members_store_if_exists_are_n_members_out_mode(tmp_path):
    new = simulate(Lorenz96(), n_members=2, out=tmp_path / "new.zarr", mode="w-", **L96).load()
    with pytest.warns(FutureWarning) as caught:
        old = simulate(Lorenz96(), members=2, store=tmp_path / "old.zarr", if_exists="error", **L96).load()
    said = sorted(str(w.message) for w in caught)
    assert said == ["simulate: if_exists= is deprecated, use mode=", "simulate: members= is deprecated, use n_members=",
                    "simulate: store= is deprecated, use out="]
    xr.testing.assert_identical(old.drop_attrs(), new.drop_attrs())
    with pytest.raises(TypeError, match="both"):
        simulate(Lorenz96(), members=2, n_members=2, **L96)


def test_if_exists_values_map_to_modes(tmp_path):
    assert IF_EXISTS == {"error": "w-", "overwrite": "w", "resume": "resume"}
    path = tmp_path / "d.zarr"
    first = simulate(DarcyFlow(n=8), n_members=3, chunk_members=2, out=path, progress=False).load()
    with pytest.warns(FutureWarning), pytest.raises(FileExistsError, match="mode='resume'"):  # "error" -> "w-"
        simulate(DarcyFlow(n=8), n_members=3, chunk_members=2, store=path, if_exists="error", progress=False)
    with pytest.warns(FutureWarning):  # "resume" -> "resume": nothing left to do
        done = []
        again = simulate(DarcyFlow(n=8), n_members=3, chunk_members=2, out=path, if_exists="resume", on_chunk=done.append,
                         progress=False)
    assert done == [] and np.array_equal(again.u.values, first.u.values)
    with pytest.warns(FutureWarning):  # "overwrite" -> "w": another seed replaces the store
        other = simulate(DarcyFlow(n=8), n_members=3, chunk_members=2, out=path, if_exists="overwrite", seed=1,
                         progress=False)
    assert not np.array_equal(other.u.values, first.u.values)
    with pytest.raises(ValueError, match="if_exists must be one of"), pytest.warns(FutureWarning):
        simulate(DarcyFlow(n=8), out=path, if_exists="append")
    with pytest.raises(ValueError, match="mode must be .w-., .w. or .resume."):
        simulate(DarcyFlow(n=8), out=path, mode="append")


def test_generate_store_is_out(tmp_path):
    emu, seeds = gaussian_emulator(), seeds_dataset()
    new = emu.generate(seeds, 4, steps=4, out=tmp_path / "new.zarr", member_chunk=2, progress=False)
    with pytest.warns(FutureWarning, match="generate: store= is deprecated, use out="):
        old = emu.generate(seeds, 4, steps=4, store=tmp_path / "old.zarr", member_chunk=2, progress=False)
    np.testing.assert_array_equal(old["x"].values, new["x"].values)
    with pytest.raises(TypeError, match="both"):
        emu.generate(seeds, 4, store=tmp_path / "a.zarr", out=tmp_path / "b.zarr")
    assert EnsembleEmulator.generate.__name__ == "generate"


def test_lorenz96_ensembles_members_is_n_members():
    new = lorenz96_ensembles(2, 7, n_members=3)
    with pytest.warns(FutureWarning, match="members= is deprecated, use n_members="):
        old = lorenz96_ensembles(2, 7, members=3)
    xr.testing.assert_identical(old, new)


def test_sample_from_checkpoint_members_is_n_members(tmp_path):
    """The alias reaches the size check (before any checkpoint is read) under its new name."""
    with pytest.warns(FutureWarning, match="members= is deprecated, use n_members="), \
            pytest.raises(ValueError, match="n_members must be >= 1"):
        sample_from_checkpoint(tmp_path / "run", tmp_path / "data.zarr", tmp_path / "ens.zarr", members=0)
    with pytest.raises(TypeError, match="both"):
        sample_from_checkpoint(tmp_path / "run", tmp_path / "data.zarr", tmp_path / "ens.zarr", members=2, n_members=2)
    with pytest.raises(TypeError, match="both"):
        sampling_plan(tmp_path / "run", tmp_path / "data.zarr", members=2, n_members=2, cases=None, steps=2,
                      method="heun", seed=0)


def test_long_running_entry_points_show_progress_by_default_the_inner_sampler_does_not():
    import inspect

    from sciffusion.diffusion import sample as diffusion_sample
    from sciffusion.emulators import DYffusion, Downscaler, Rollout

    entry = [EnsembleEmulator.fit, EnsembleEmulator.generate, Rollout.fit, Rollout.rollout, DYffusion.fit,
             Downscaler.fit, Downscaler.downscale, simulate, sample_from_checkpoint]
    for f in entry:
        assert inspect.signature(f).parameters["progress"].default is True, f.__qualname__
    assert inspect.signature(diffusion_sample).parameters["progress"].default is False


def test_generate_and_member_generators_take_n_members_and_still_the_old_members_keyword(tmp_path):
    from sciffusion.diffusion import member_generators
    from sciffusion.emulators import EnsembleStore, generate

    new = [g.initial_seed() for g in member_generators(5, n_members=3)]
    with pytest.warns(FutureWarning, match="members= is deprecated, use n_members="):
        assert [g.initial_seed() for g in member_generators(5, members=3)] == new
    assert [g.initial_seed() for g in member_generators(5, [1, 2])] == new[1:]  # ids: the same streams

    def zero(x, sigma, cond=None):
        return torch.zeros_like(x)

    kw = dict(event_shape=(2,), n_conditions=1, steps=2, progress=False)
    with pytest.warns(FutureWarning, match="members= is deprecated"):
        old = generate(zero, None, members=3, **kw)
    torch.testing.assert_close(generate(zero, None, n_members=3, **kw), old, rtol=0, atol=0)
    template = xr.Dataset({"u": (("x",), np.zeros(2, np.float32))})
    with pytest.warns(FutureWarning, match="members= is deprecated"):
        store = EnsembleStore(tmp_path / "e.zarr", template, members=2)
    assert store.members == 2 and store.open().sizes["member"] == 2
