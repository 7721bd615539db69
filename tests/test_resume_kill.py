"""Every training path checkpoints periodically and, killed at a random step, resumes from its last
checkpoint with the same losses thereafter and the same final weights as an uninterrupted run:
``sciffusion train`` and DYffusion.fit (either network) by a real SIGKILL of the process;
EnsembleEmulator.fit, Rollout.fit and Downscaler.fit killed in-process by an exception at the chosen step. Also what
every emulator fit shares: ``threads=``, the report of an already finished run, and (for the
ensemble emulator) output attributes that do not claim to be the physics run."""

import json
import random
import signal
import subprocess
import sys
import textwrap
from unittest import mock

import numpy as np
import pytest
import torch
import xarray as xr

from sciffusion.checkpoint import load_checkpoint
from sciffusion.cli import main
from sciffusion.data import write_zarr
from sciffusion.demo import demo_dataset
from sciffusion.emulators import Downscaler, DYffusion, EnsembleEmulator, Rollout
from sciffusion.training import Trainer, default_checkpoint_every

STEPS = 12
EVERY = default_checkpoint_every(STEPS)  # no checkpoint_every given anywhere: the default cadence (2)
KILL_AT = random.Random(19).randrange(EVERY + 1, STEPS)  # a step that is not itself checkpointed


class Killed(BaseException):
    """Stands for SIGKILL in-process: raised after a training step, nothing after it runs."""


def killed_at(step: int, run: str | None = None):
    """Patch Trainer.train_step to die right after ``step`` (in the run directory named ``run``)."""
    train_step = Trainer.train_step

    def dying(self):
        loss = train_step(self)
        if self.step == step and (run is None or self.out_dir.name == run):
            raise Killed
        return loss

    return mock.patch.object(Trainer, "train_step", dying)


def losses(history) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in history}


def assert_same_state(a, b):
    a, b = a.state_dict(), b.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def assert_resumed_with_same_losses(straight: dict, resumed: dict):
    """The resumed run restarted after the last checkpoint before the kill, not from scratch, and its
    losses equal the uninterrupted run's bit for bit."""
    last_ckpt = KILL_AT - KILL_AT % EVERY
    assert min(resumed) == last_ckpt + 1, f"resumed at {min(resumed)}, expected after the checkpoint at {last_ckpt}"
    assert resumed == {k: straight[k] for k in resumed}


# ----------------------------------------------------------------------------- sciffusion train
CLI_KILLED = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from sciffusion.training import Trainer
    from sciffusion.cli import main
    kill_at, train_step = int(sys.argv[2]), Trainer.train_step
    def dying(self):
        loss = train_step(self)
        if self.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return loss
    Trainer.train_step = dying
    sys.exit(main(["train", sys.argv[1], "--no-progress"]))
    """
)


def train_config(tmp_path, out):
    if not (tmp_path / "data.zarr").exists():
        write_zarr(demo_dataset(n_time=24, size=8, seed=1), tmp_path / "data.zarr")
    cfg = tmp_path / f"{out}.toml"
    cfg.write_text(textwrap.dedent(f"""
        [data]
        path = "{tmp_path / 'data.zarr'}"
        variables = ["u"]
        grid_dims = ["y", "x"]
        along = "time"
        offset = 1
        [model]
        net = "UNet2d"
        kwargs = {{ channels = [4, 8], blocks_per_level = 1, padding = "circular", attention_levels = [], groups = 4 }}
        [training]
        out_dir = "{tmp_path / out}"
        steps = {STEPS}
        batch_size = 4
        """))
    return cfg


def metrics(run) -> dict[int, float]:
    return losses(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())


def test_sciffusion_train_killed_with_sigkill_resumes_with_the_same_losses(tmp_path):
    assert main(["train", str(train_config(tmp_path, "straight")), "--no-progress"]) == 0
    cfg = train_config(tmp_path, "killed")
    died = subprocess.run([sys.executable, "-c", CLI_KILLED, str(cfg), str(KILL_AT)], capture_output=True, text=True)
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert (tmp_path / "killed" / "latest").read_text() == f"step_{KILL_AT - KILL_AT % EVERY:08d}"
    assert main(["train", str(cfg), "--no-progress"]) == 0
    straight, killed = metrics(tmp_path / "straight"), metrics(tmp_path / "killed")
    assert straight.keys() == killed.keys() == set(range(1, STEPS + 1))
    assert killed == straight
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "killed")
    for name in a["ema"]:
        assert torch.equal(a["ema"][name], b["ema"][name]), name


# ----------------------------------------------------------------------------- emulators
def trajectories(n_runs=2, n_times=12, n_sites=8, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((n_runs, n_times, n_sites))
    for t in range(1, n_times):
        x[:, t] = 0.8 * x[:, t - 1] + 0.5 * rng.normal(size=(n_runs, n_sites))
    return xr.Dataset({"x": (("run", "time", "site"), x)}, coords={"time": np.arange(n_times), "site": np.arange(n_sites)})


NET = {"name": "PeriodicConv1d", "kwargs": {"width": 8, "n_blocks": 1}}


def sst(n_time=8):
    rng = np.random.default_rng(0)
    v = 290 + rng.normal(size=(n_time, 8, 8)).astype(np.float32)
    return xr.Dataset({"sst": (("time", "lat", "lon"), v)},
                      coords={"time": np.arange(n_time), "lat": np.linspace(-40, 40, 8), "lon": np.arange(8) * 45.0})


def ensembles(n_init=3, members=4, sites=8):
    x = np.random.default_rng(0).normal(size=(n_init, 2, members, sites)).astype(np.float32)
    return xr.Dataset({"x": (("init_time", "lead_time", "member", "k"), x)},
                      coords={"init_time": np.arange(n_init), "lead_time": [1.0, 2.0], "member": np.arange(members),
                              "k": np.arange(sites)},
                      attrs={"title": "sciffusion lorenz96 simulation", "source": "sciffusion.systems.Lorenz96"})


FITS = {
    "EnsembleEmulator": lambda **kw: EnsembleEmulator.fit(ensembles(), net={"kwargs": {"width": 8, "n_blocks": 1}},
                                                          batch_size=8, **kw),
    "Rollout": lambda **kw: Rollout.fit(trajectories(), net=NET, batch_size=8, **kw),
    "DYffusion": lambda **kw: DYffusion.fit(trajectories(), net=NET, horizon=2, batch_size=8, **kw),
    "Downscaler": lambda **kw: Downscaler.fit(sst(), factor=2, batch_size=4,
                                              net={"kwargs": {"channels": [4, 4], "groups": 2}}, **kw),
}


@pytest.mark.parametrize("name", ["EnsembleEmulator", "Rollout", "Downscaler"])
def test_emulator_fit_killed_at_a_random_step_resumes_with_the_same_losses(tmp_path, name):
    kw = dict(steps=STEPS, warmup_steps=2, seed=3)
    straight = FITS[name](out_dir=tmp_path / "straight", **kw)
    with killed_at(KILL_AT), pytest.raises(Killed):
        FITS[name](out_dir=tmp_path / "killed", **kw)
    resumed = FITS[name](out_dir=tmp_path / "killed", **kw)
    assert_resumed_with_same_losses(losses(straight.history), losses(resumed.history))
    assert_same_state(straight.denoiser, resumed.denoiser)


DY_KILLED = textwrap.dedent(
    """
    import json, os, signal, sys
    import xarray as xr
    from sciffusion.training import Trainer
    from sciffusion.emulators import DYffusion
    data, out, network, kill_at, kw = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5])
    train_step = Trainer.train_step
    def dying(self):
        loss = train_step(self)
        if self.step == kill_at and self.out_dir.name == network:
            os.kill(os.getpid(), signal.SIGKILL)
        return loss
    Trainer.train_step = dying
    DYffusion.fit(xr.open_zarr(data).load(), out_dir=out, **kw)
    """
)


@pytest.mark.parametrize("network", ["interpolator", "forecaster"])
def test_dyffusion_fit_killed_with_sigkill_in_either_network_resumes_bit_for_bit(tmp_path, network):
    """A real SIGKILL of the fitting process in the interpolator's or the forecaster's run: the
    refit resumes that network from its last checkpoint (the finished interpolator is not retrained)
    with the uninterrupted run's losses, and ends with the same weights of both networks."""
    kw = dict(net=NET, horizon=2, batch_size=8, steps=STEPS, warmup_steps=2, seed=5, threads=1, progress=False)
    write_zarr(trajectories(), tmp_path / "data.zarr")
    data = xr.open_zarr(tmp_path / "data.zarr").load()
    straight = DYffusion.fit(data, out_dir=tmp_path / "straight", **kw)
    died = subprocess.run([sys.executable, "-c", DY_KILLED, str(tmp_path / "data.zarr"), str(tmp_path / "killed"), network,
                           str(KILL_AT), json.dumps(kw)], capture_output=True, text=True)
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert (tmp_path / "killed" / network / "latest").read_text() == f"step_{KILL_AT - KILL_AT % EVERY:08d}"
    resumed = DYffusion.fit(data, out_dir=tmp_path / "killed", **kw)
    for name in ("interpolator", "forecaster"):
        a, b = getattr(straight, name), getattr(resumed, name)
        if name == network:
            steps = range(STEPS - len(b.losses) + 1, STEPS + 1)
            assert_resumed_with_same_losses(dict(zip(range(1, STEPS + 1), a.losses)), dict(zip(steps, b.losses)))
        elif name == "interpolator":
            assert len(b.losses) == 0, "the finished interpolator was trained again"
        assert_same_state(a, b)
    loaded = DYffusion.load(tmp_path / "killed")
    assert_same_state(loaded.forecaster, straight.forecaster)


def test_train_on_a_finished_run_reports_the_stored_last_loss(tmp_path, capsys):
    cfg = train_config(tmp_path, "run")
    assert main(["train", str(cfg), "--no-progress", "--steps", "2"]) == 0
    capsys.readouterr()
    assert main(["train", str(cfg), "--no-progress", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert f"already trained to step 2 (nothing to do); last recorded loss {metrics(tmp_path / 'run')[2]:.4f}" in out
    assert "nan" not in out


@pytest.mark.parametrize("name", FITS)
def test_emulator_fit_trains_with_the_requested_threads_and_restores_them(name):
    seen, train_step = [], Trainer.train_step

    def counting(self):
        seen.append(torch.get_num_threads())
        return train_step(self)

    before = torch.get_num_threads()
    with mock.patch.object(Trainer, "train_step", counting):
        FITS[name](steps=2, threads=before + 1)
    assert seen and set(seen) == {before + 1}
    assert torch.get_num_threads() == before


def test_emulated_ensemble_does_not_keep_the_physics_title_or_source():
    emu = FITS["EnsembleEmulator"](steps=1)
    seeds = ensembles().isel(member=[0, 1])
    out = emu.generate(seeds, 3, steps=2)
    assert out.attrs["title"] == "sciffusion emulated ensemble (3 members from 2 seed members, emulation)"
    assert out.attrs["source_title"] == "sciffusion lorenz96 simulation"
    assert out.attrs["source"] == "sciffusion.emulators.EnsembleEmulator (emulating: sciffusion.systems.Lorenz96)"
