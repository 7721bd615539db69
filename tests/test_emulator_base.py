"""The emulator base (issue 20): every emulator is an Emulator that saves and loads through it, a
checkpoint of one emulator is refused by another with its name, the kept checkpoints still load,
and generation goes through one batched sampler (the dask tiles draw what generate draws)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from sciffusion.checkpoint import sha256, weights_file
from sciffusion.emulators import DYffusion, Downscaler, EnsembleEmulator, Rollout, coarsen, generate
from sciffusion.emulators.base import Emulator

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("make_reference_outputs", ROOT / "tests/data/make_reference_outputs.py")
REF = importlib.util.module_from_spec(spec)
spec.loader.exec_module(REF)
CONV = {"name": "PeriodicConv1d", "kwargs": {"width": 8, "n_blocks": 1}}


def _ensemble():
    ds = REF.seeds_data()
    emu = EnsembleEmulator.fit(ds, net={"kwargs": {"width": 8, "n_blocks": 1, "groups": 4}}, steps=2, batch_size=16,
                               warmup_steps=1, seed=3)
    return emu, lambda m: m.generate(ds[["x"]].isel(init_time=[0, 1], member=[0, 1]), 3, steps=3, seed=1)


def _rollout():
    ds = REF.ar1_data()
    model = Rollout.fit(ds, net=CONV, steps=2, batch_size=8, warmup_steps=1, seed=2)
    return model, lambda m: m.rollout(ds.isel(run=0, time=0), 3, n_members=2, steps=3, seed=1, progress=False)


def _dyffusion():
    ds = REF.ar1_data(seed=1)
    model = DYffusion.fit(ds, net=CONV, horizon=2, steps=2, batch_size=8, warmup_steps=1, seed=4)
    return model, lambda m: m.rollout(ds.isel(run=0, time=0), 4, n_members=2, seed=3, progress=False)


def _downscaler():
    model = Downscaler.fit(REF.sst_data(), factor=4, steps=2, batch_size=4, warmup_steps=1, seed=6,
                           net={"kwargs": {"channels": [8, 8], "groups": 4}})
    coarse = coarsen(REF.sst_data(n_time=2, seed=1), 4, grid_dims=["lat", "lon"])
    return model, lambda m: m.downscale(coarse, 2, steps=2, seed=1)


BUILD = {EnsembleEmulator: _ensemble, Rollout: _rollout, DYffusion: _dyffusion, Downscaler: _downscaler}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each emulator, trained for two steps, its output, and the checkpoint it was saved to."""
    out = {}
    for cls, build in BUILD.items():
        model, run = build()
        before = run(model)
        path = model.save(tmp_path_factory.mktemp(cls.__name__) / "ckpt")
        out[cls] = (model, run, before, path)
    return out


def test_every_emulator_is_an_emulator_with_its_own_checkpoint_key():
    assert all(issubclass(cls, Emulator) for cls in BUILD)
    assert {cls.key for cls in BUILD} == {"ensemble_emulator", "rollout", "dyffusion", "downscaler"}
    assert all(Emulator.kinds[cls.key] is cls for cls in BUILD)


@pytest.mark.parametrize("cls", list(BUILD), ids=lambda c: c.__name__)
def test_save_then_load_gives_the_same_samples_bit_for_bit_and_the_same_checkpoint_record(saved, cls):
    model, run, before, path = saved[cls]
    assert model.checkpoint == str(path) and model.checkpoint_sha256 == sha256(weights_file(path))
    loaded = cls.load(path)
    assert type(loaded) is cls and loaded.sampler == model.sampler
    assert (loaded.checkpoint, loaded.checkpoint_sha256) == (model.checkpoint, model.checkpoint_sha256)
    after, again = run(loaded), run(model)
    for v in before.data_vars:
        np.testing.assert_array_equal(after[v].values, again[v].values)
    for key in ("emulator", "checkpoint", "checkpoint_sha256", "sampler", "seed"):
        assert after.attrs[key] == again.attrs[key]
    assert after.attrs["emulator"] == cls.emulator and after.attrs["history"].startswith(f"{cls.__name__}.")


@pytest.mark.parametrize("cls", list(BUILD), ids=lambda c: c.__name__)
@pytest.mark.parametrize("other", list(BUILD), ids=lambda c: c.__name__)
def test_a_checkpoint_of_another_emulator_is_refused_naming_what_it_is(saved, cls, other):
    if cls is other:
        return
    path = saved[other][3]
    with pytest.raises(ValueError, match=rf"is not {cls.label} \(no '{cls.key}' in its config\): "
                                         rf"it is {other.label}; use {other.__name__}\.load"):
        cls.load(path)


def test_a_fit_with_out_dir_records_the_run_checkpoint_that_load_gives(tmp_path):
    ds = REF.ar1_data()
    model = Rollout.fit(ds, net=CONV, steps=2, batch_size=8, warmup_steps=1, seed=2, out_dir=tmp_path / "run",
                        progress=False)
    loaded = Rollout.load(tmp_path / "run")
    assert model.checkpoint == loaded.checkpoint == str(tmp_path / "run" / "step_00000002")
    assert model.checkpoint_sha256 == loaded.checkpoint_sha256 == sha256(tmp_path / "run/step_00000002/ema.safetensors")


@pytest.mark.parametrize("path, cls", [("sciffusion/assets/seeds_lorenz96", EnsembleEmulator),
                                       ("benchmarks/models/l96_fe1/emulation", EnsembleEmulator),
                                       ("benchmarks/models/l96_fe1/post-processing", EnsembleEmulator),
                                       ("benchmarks/models/rollout_kolmogorov_ar_pattern_gpu", Rollout)])
def test_the_kept_checkpoints_still_load(path, cls):
    model = cls.load(ROOT / path)
    assert type(model) is cls and model.checkpoint_sha256 == sha256(weights_file(ROOT / path))
    assert all(not p.requires_grad for p in model.denoiser.parameters())


def test_a_dask_tile_draws_what_generate_draws_for_its_jobs():
    """The tile path samples through the same batched loop: members 1..2 of cases 2..3, cut at a batch
    boundary of the whole job list, equal generate's draws bit for bit."""
    from sciffusion.emulators.members import sample_jobs
    from sciffusion.testing import GaussianMixture

    mixture = GaussianMixture([1.0, 2.0], [[0.0, 0.0, 0.0], [3.0, -1.0, 2.0]])

    def den(x, sigma, cond):  # the mixture shifted by each case's condition
        return mixture(x - cond, sigma) + cond

    cond = torch.arange(4.0).reshape(4, 1)
    full = generate(den, cond, 3, event_shape=(3,), seed=5, batch_size=3, steps=4, progress=False)
    jobs = [(i, m) for i in range(4) for m in range(3)][6:]  # cases 2, 3: two whole batches
    part = sample_jobs(den, cond[2:], [(c - 2, m) for c, m in jobs], case_ids=[2, 3], event_shape=(3,), seed=5,
                       batch_size=3, steps=4, method="heun")
    torch.testing.assert_close(part, full[2:].reshape(6, 3), rtol=0, atol=0)
    assert not torch.equal(full[2, 0], full[3, 0]) and not torch.equal(full[2, 0], full[2, 1])
