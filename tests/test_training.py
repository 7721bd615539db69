"""Trainer and checkpoints: learning a known conditional law, exact resume after SIGKILL,
refusal of pickles, atomic and verified checkpoints."""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sciffusion.checkpoint import UnsafeCheckpointError, load_checkpoint, load_denoiser
from sciffusion.diffusion import Denoiser, sample
from sciffusion.nets import MLP
from sciffusion.training import TensorPairs, Trainer


def toy_data(n=8192, seed=0):
    """x | c ~ N((2c, -c), diag(0.5^2, (0.25 + 0.1 c^2)^2)), c ~ N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, 1, generator=g)
    std = torch.cat([torch.full_like(c, 0.5), 0.25 + 0.1 * c**2], 1)
    return torch.cat([2 * c, -c], 1) + std * torch.randn(n, 2, generator=g), c


def test_trained_conditional_model_recovers_known_conditional_mean_and_std():
    """Tolerance: |mean error| < 0.1 and relative std error < 15% at c in {-1.5, 0, 1}
    (4000 Heun samples each, 18 steps), after 2000 steps of batch 256."""
    torch.manual_seed(0)
    x, c = toy_data()
    trainer = Trainer(Denoiser(MLP(2, cond_features=1, width=64, depth=3)), TensorPairs(x, c),
                      batch_size=256, lr=2e-3, warmup_steps=50, ema_decay=0.99, progress=False)
    trainer.fit(2000)
    for cv in (-1.5, 0.0, 1.0):
        cond = torch.full((4000, 1), cv)
        xs = sample(trainer.ema, (4000, 2), steps=18, cond=cond, generator=torch.Generator().manual_seed(1))
        mean, std = xs.mean(0), xs.std(0)
        exact_mean = torch.tensor([2 * cv, -cv])
        exact_std = torch.tensor([0.5, 0.25 + 0.1 * cv**2])
        assert (mean - exact_mean).abs().max() < 0.1, (cv, mean, exact_mean)
        assert ((std - exact_std).abs() / exact_std).max() < 0.15, (cv, std, exact_std)


RUN = textwrap.dedent(
    """
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from sciffusion.diffusion import Denoiser
    from sciffusion.nets import MLP
    from sciffusion.training import TensorPairs, Trainer
    out, steps, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(200, 3, generator=g), torch.randn(200, 1, generator=g)
    net = MLP(3, cond_features=1, width=16, depth=2)
    trainer = Trainer(Denoiser(net), TensorPairs(x, c), out_dir=out, batch_size=32, lr=1e-2,
                      warmup_steps=3, checkpoint_every=5, ema_decay=0.9, seed=7, progress=False,
                      val_data=TensorPairs(x[:40], c[:40]))
    def maybe_die(record):
        if record["step"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    trainer.fit(steps, callback=maybe_die)
    """
)


def run(out, steps, kill_at=-1):
    return subprocess.run([sys.executable, "-c", RUN, str(out), str(steps), str(kill_at)], capture_output=True, text=True)


def test_sigkill_then_resume_is_bit_for_bit(tmp_path):
    """Killed with SIGKILL at step 13 (last checkpoint at 10), resumed to 23 (crossing an epoch
    boundary: 6 batches per epoch): model, EMA and optimizer equal an uninterrupted run exactly."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run(straight, 23).returncode == 0
    died = run(killed, 23, kill_at=13)
    assert died.returncode == -signal.SIGKILL
    assert (killed / "latest").read_text() == "step_00000010"
    resumed = run(killed, 23)
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(straight, trainer=True)
    b = load_checkpoint(killed, trainer=True)
    for key in ("weights", "ema", "trainer_tensors"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert a["trainer_meta"] == b["trainer_meta"]
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 24)), "metrics log must hold each step once after the resume"


def make_checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    trainer = Trainer(Denoiser(MLP(2, width=8, depth=1)), TensorPairs(x), out_dir=tmp_path / "run",
                      batch_size=16, checkpoint_every=4, progress=False)
    trainer.fit(4)
    return tmp_path / "run"


def test_checkpoint_rebuilds_the_model_from_json_and_safetensors(tmp_path):
    run_dir = make_checkpoint(tmp_path)
    den, config = load_denoiser(run_dir)
    assert config["model"]["net"]["name"] == "MLP" and config["format"] == "sciffusion-checkpoint"
    assert sorted(p.name for p in (run_dir / "step_00000004").iterdir()) == [
        "config.json", "ema.safetensors", "trainer.json", "trainer.safetensors", "weights.safetensors"]
    x = torch.randn(5, 2)
    ema = load_checkpoint(run_dir)["ema"]
    ref = Denoiser(MLP(2, width=8, depth=1))
    ref.load_state_dict(ema)
    assert torch.equal(den(x, torch.ones(5)), ref(x, torch.ones(5)))


def test_pickle_bearing_checkpoint_is_refused(tmp_path):
    """A torch.save (pickle) payload is refused, whatever its file name; nothing is unpickled."""
    run_dir = make_checkpoint(tmp_path)
    step = run_dir / "step_00000004"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"w": torch.zeros(1), "evil": Evil()}, step / "weights.safetensors")
    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        load_denoiser(run_dir)
    assert not marker.exists()
    torch.save({"w": torch.zeros(1)}, tmp_path / "model.pt")
    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        load_denoiser(tmp_path / "model.pt")


def test_a_safetensors_file_whose_header_length_starts_with_0x80_is_read(tmp_path):
    """The first byte of a safetensors file is the low byte of its header length; 0x80 there is not
    a pickle marker (a header of 0x..80 bytes was refused as a pickle before)."""
    from safetensors.torch import save_file

    from sciffusion.checkpoint import check_safetensors

    for pad in range(300):  # metadata of growing length until the header length ends in 0x80
        path = tmp_path / "w.safetensors"
        save_file({"w": torch.arange(3.0)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    check_safetensors(path)  # no UnsafeCheckpointError
    bad = tmp_path / "p.safetensors"
    bad.write_bytes(b"\x80\x04" + b"\x00" * 20)  # a pickle's start is still refused as one
    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        check_safetensors(bad)


def test_corrupt_weights_are_detected_by_hash(tmp_path):
    run_dir = make_checkpoint(tmp_path)
    f = run_dir / "step_00000004" / "ema.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_denoiser(run_dir)


def test_leftover_temporary_directory_does_not_hide_the_last_good_checkpoint(tmp_path):
    """A crash while writing leaves only a hidden temp dir; 'latest' still names a complete checkpoint."""
    run_dir = make_checkpoint(tmp_path)
    (run_dir / ".step_00000008.tmp-999").mkdir()
    (run_dir / ".step_00000008.tmp-999" / "weights.safetensors").write_bytes(b"torn")
    den, config = load_denoiser(run_dir)
    assert config["checkpoint_dir"].endswith("step_00000004")


def test_trainer_rejects_tiny_dataset_and_bad_precision():
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(Denoiser(MLP(2)), TensorPairs(torch.zeros(3, 2)), batch_size=8, progress=False)
    with pytest.raises(ValueError, match="mixed_precision"):
        Trainer(Denoiser(MLP(2)), TensorPairs(torch.zeros(30, 2)), batch_size=8, mixed_precision="fp8", progress=False)


def test_time_limited_fit_checkpoints_and_resumes_to_the_uninterrupted_run(tmp_path):
    """``fit(steps, max_seconds=0)`` stops after one step with a checkpoint there; fitting again
    resumes, and the finished run's weights equal an uninterrupted run's exactly."""
    def trainer(out):
        torch.manual_seed(0)
        x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
        return Trainer(Denoiser(MLP(2, width=8, depth=1)), TensorPairs(x), out_dir=out, batch_size=16,
                       checkpoint_every=100, progress=False, seed=3)

    cut = trainer(tmp_path / "cut")
    hist = cut.fit(6, max_seconds=0)
    assert cut.stopped_early and [h["step"] for h in hist] == [1]
    assert (tmp_path / "cut" / "latest").read_text() == "step_00000001"
    resumed = trainer(tmp_path / "cut")  # a new process would do the same
    resumed.fit(6)
    assert resumed.step == 6 and not resumed.stopped_early
    straight = trainer(tmp_path / "straight")
    straight.fit(6)
    a, b = load_checkpoint(tmp_path / "cut"), load_checkpoint(tmp_path / "straight")
    for name in a["weights"]:
        assert torch.equal(a["weights"][name], b["weights"][name]), name
    with pytest.raises(ValueError, match="max_seconds"):
        trainer(None).fit(2, max_seconds=-1)


# ----------------------------------------------------------------------------- damaged checkpoints, other models
def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("keep", [10, 100])  # inside the header; inside the tensor data
@pytest.mark.parametrize("loader", ["load_checkpoint", "load_denoiser", "load_task", "Trainer"])
def test_a_truncated_checkpoint_file_is_named_as_damaged_at_every_load_path(tmp_path, loader, keep):
    from sciffusion.checkpoint import DamagedCheckpointError, load_task

    run_dir = make_checkpoint(tmp_path)
    ema = run_dir / "step_00000004" / "ema.safetensors"
    truncate(ema, keep)
    load = {"load_checkpoint": load_checkpoint, "load_denoiser": load_denoiser,
            "load_task": lambda p: load_task(p, "training", "a training run"),
            "Trainer": lambda p: Trainer(Denoiser(MLP(2, width=8, depth=1)), TensorPairs(torch.randn(64, 2)),
                                         out_dir=p, batch_size=16, progress=False)}[loader]
    with pytest.raises(DamagedCheckpointError, match=f"{ema}.* damaged"):
        load(run_dir)


def small_trainer(out, width=8, keep_last=3):
    torch.manual_seed(0)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    return Trainer(Denoiser(MLP(2, width=width, depth=1)), TensorPairs(x), out_dir=out, batch_size=16,
                   checkpoint_every=2, keep_last=keep_last, progress=False, seed=3)


def test_resume_onto_a_damaged_latest_checkpoint_falls_back_to_the_previous_one_and_stays_exact(tmp_path):
    """Checkpoints at 2, 4, 6; step 6's EMA truncated: a warning names it, training resumes from 4,
    the run still ends at the uninterrupted run's weights, and step 6 is rewritten whole."""
    small_trainer(tmp_path / "run").fit(6)
    small_trainer(tmp_path / "straight").fit(8)
    truncate(tmp_path / "run" / "step_00000006" / "ema.safetensors", 100)
    with pytest.warns(UserWarning, match="step_00000006/ema.safetensors is damaged"):
        resumed = small_trainer(tmp_path / "run")
    assert resumed.step == 4
    resumed.fit(8)
    a, b = load_checkpoint(tmp_path / "run", trainer=True), load_checkpoint(tmp_path / "straight", trainer=True)
    for name in a["weights"]:
        assert torch.equal(a["weights"][name], b["weights"][name]), name
    assert load_checkpoint(tmp_path / "run" / "step_00000006")["ema"] is not None


def test_resume_with_no_usable_checkpoint_is_a_clear_error(tmp_path):
    from sciffusion.checkpoint import DamagedCheckpointError

    small_trainer(tmp_path / "run", keep_last=1).fit(2)
    truncate(tmp_path / "run" / "step_00000002" / "weights.safetensors", 0)
    with pytest.raises(DamagedCheckpointError, match=r"holds no usable checkpoint .*step_00000002/weights.safetensors.*--fresh"):
        small_trainer(tmp_path / "run")


def test_another_model_in_an_existing_out_dir_is_refused_naming_what_differs(tmp_path):
    small_trainer(tmp_path / "run").fit(2)
    with pytest.raises(ValueError, match=r"out_dir .*run holds another model \(net kwargs width 8 vs 16, stored vs new\); "
                                         r"use --fresh"):
        small_trainer(tmp_path / "run", width=16)
    assert small_trainer(tmp_path / "run").step == 2  # nothing was lost


def test_checkpoint_files_get_the_mode_a_plain_open_gives(tmp_path):
    """Not 0600 (safetensors' own writer): every file of a run is readable as the umask allows."""
    plain = tmp_path / "plain"
    plain.write_text("")
    run_dir = make_checkpoint(tmp_path)
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"latest", "metrics.jsonl", "weights.safetensors", "ema.safetensors", "config.json"}
    for p in files:
        assert p.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777, p


def test_threads_apply_during_fit_and_are_restored_after():
    seen = []
    trainer = Trainer(Denoiser(MLP(2, width=8, depth=1)), TensorPairs(torch.randn(32, 2)), batch_size=16, progress=False)
    before = torch.get_num_threads()
    trainer.fit(2, callback=lambda record: seen.append(torch.get_num_threads()), threads=before + 1)
    assert seen == [before + 1, before + 1] and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        trainer.fit(3, threads=0)
