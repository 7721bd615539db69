"""DDP training (2 gloo processes on CPU) follows single-process training on the concatenated
batch, and resumes exactly; `torchrun -m sciffusion train` runs the same path."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sciffusion.checkpoint import load_checkpoint
from sciffusion.diffusion import Denoiser
from sciffusion.distributed.ddp import shutdown
from sciffusion.nets import MLP
from sciffusion.training import TensorPairs, Trainer

SETTINGS = dict(batch_size=8, lr=1e-2, warmup_steps=2, checkpoint_every=3, ema_decay=0.9, seed=7, progress=False)
TOL = dict(rtol=1e-4, atol=1e-6)  # float32 sums in another order, over 6 AdamW steps


def _problem():
    """24 pairs (3 global batches per epoch, so 6 steps cross an epoch) and a seeded model."""
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(24, 3, generator=g), torch.randn(24, 1, generator=g)
    torch.manual_seed(0)
    return Denoiser(MLP(3, cond_features=1, width=16, depth=2)), TensorPairs(x, c)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, jobs):
    """In each rank: for (out_dir, steps) in jobs, build a Trainer (resuming from out_dir) and fit."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for out_dir, steps in jobs:
            den, data = _problem()
            trainer = Trainer(den, data, out_dir=out_dir, **SETTINGS)
            assert trainer.dist.world == world and trainer._ddp is not None
            trainer.fit(steps)
    finally:
        shutdown()  # barrier, then destroy


def _spawn(jobs, attempts: int = 2, limit_s: float = 120.0):
    """Run ``jobs`` in 2 fresh ranks (forked: no CUDA here, and no second torch import to wait for).

    A forked rank can, rarely, hang before the rendezvous (a lock inherited mid-use from the
    parent's threads); after ``limit_s`` the ranks are killed and the jobs run again on a new port.
    Resuming is exact, so a rerun over checkpoints the hung attempt wrote gives the same weights.
    """
    import time

    for attempt in range(attempts):
        ctx = mp.start_processes(_ddp_worker, args=(2, _free_port(), jobs), nprocs=2, join=False,
                                 start_method="fork")
        deadline = time.monotonic() + limit_s
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                    p.join()
                break
        else:
            return
    raise TimeoutError(f"2-rank gloo run did not finish within {limit_s:.0f} s in {attempts} attempts")


def _weights(run_dir):
    c = load_checkpoint(run_dir, trainer=True)
    return c["weights"], c["ema"], c["trainer_meta"]


def test_two_rank_ddp_matches_single_process_on_the_global_batch_and_resumes_exactly(tmp_path):
    """(a) 6 DDP steps on 2 ranks (4 rows each) give the weights and EMA of 6 single-process steps
    on the 8-row batch to float tolerance; (b) a DDP run stopped at step 3 and resumed in fresh
    processes reaches bit-for-bit the uninterrupted DDP run's step-6 weights, optimizer step and
    data position; (c) the DDP checkpoint resumes in a single process too (the data order is global)."""
    _spawn([(str(tmp_path / "ddp"), 6), (str(tmp_path / "cut"), 3)])
    _spawn([(str(tmp_path / "cut"), 6)])
    den, data = _problem()
    single = Trainer(den, data, out_dir=tmp_path / "single", **SETTINGS)
    single.fit(6)

    w_ddp, e_ddp, meta_ddp = _weights(tmp_path / "ddp")
    w_cut, e_cut, meta_cut = _weights(tmp_path / "cut")
    for k, v in single.model.state_dict().items():
        np.testing.assert_allclose(w_ddp[k].numpy(), v.numpy(), **TOL, err_msg=k)
        np.testing.assert_allclose(e_ddp[k].numpy(), single.ema.state_dict()[k].numpy(), **TOL, err_msg=k)
        assert torch.equal(w_cut[k], w_ddp[k]) and torch.equal(e_cut[k], e_ddp[k]), k
    assert (meta_ddp["step"], meta_ddp["epoch"], meta_ddp["position"]) == (6, 2, 0)
    assert meta_cut == meta_ddp
    losses = [json.loads(ln)["loss"] for ln in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(losses, [r["loss"] for r in single.history], rtol=1e-5)  # rank 0 logs the global loss

    den, data = _problem()
    resumed = Trainer(den, data, out_dir=tmp_path / "cut", **SETTINGS)  # world size 1 continues a 2-rank run
    assert resumed.step == 6
    den, data = _problem()
    half = Trainer(den, data, **{**SETTINGS, "checkpoint_every": 100})
    half.load(tmp_path / "cut" / "step_00000003")
    half.fit(6)
    for k, v in half.model.state_dict().items():
        np.testing.assert_allclose(v.numpy(), w_ddp[k].numpy(), **TOL, err_msg=k)


def test_rank_loss_is_edm_loss_on_one_rank():
    """The DDP loss path (global noise draw, rows kept) equals edm_loss bit for bit when one rank
    holds the whole batch, with a missing-data mask and channel weights."""
    torch.manual_seed(0)
    from sciffusion.nets import UNet2d

    net = UNet2d(in_channels=2, cond_channels=0, channels=[8], blocks_per_level=1, attention_levels=[], groups=4)
    x = torch.randn(4, 2, 8, 8)
    mask = (torch.rand(4, 2, 8, 8) > 0.2).float()
    trainer = Trainer(Denoiser(net, sigma_data=0.7), TensorPairs(x), batch_size=4, channel_weights=[1.0, 2.0], progress=False)
    batch = {"x": x, "mask": mask}
    state = trainer.noise_gen.get_state()
    expected = trainer._loss(trainer.model, batch, trainer.noise_gen)
    trainer.noise_gen.set_state(state)
    got = trainer._rank_loss(trainer.model, batch, 4)
    assert torch.equal(got, expected)


def test_torchrun_cli_trains_with_ddp_like_the_single_process_cli(tmp_path):
    """`torchrun --nproc_per_node 2 -m sciffusion train CONFIG` writes rank-0 checkpoints whose
    weights match `sciffusion train CONFIG` in one process (same global batch) to float tolerance."""
    from sciffusion.cli import main
    from sciffusion.data import write_zarr
    from sciffusion.demo import demo_dataset

    write_zarr(demo_dataset(n_time=40, size=8, seed=1), tmp_path / "data.zarr")
    cfg = {"data": {"path": str(tmp_path / "data.zarr"), "variables": ["u"], "grid_dims": ["y", "x"], "along": "time",
                    "offset": 1},
           "model": {"net": "UNet2d", "kwargs": {"channels": [8], "blocks_per_level": 1, "padding": "circular",
                                                 "attention_levels": [], "groups": 4}},
           "training": {"out_dir": str(tmp_path / "single"), "steps": 3, "batch_size": 8, "checkpoint_every": 3,
                        "lr": 1e-3}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert main(["train", str(tmp_path / "cfg.json"), "--no-progress"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "sciffusion",
           "train", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "ddp"), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained to step 3") == 1 and "DDP over 2 processes" in proc.stdout  # rank 0 prints
    a, b = load_checkpoint(tmp_path / "single"), load_checkpoint(tmp_path / "ddp")
    for k, v in a["weights"].items():
        np.testing.assert_allclose(b["weights"][k].numpy(), v.numpy(), **TOL, err_msg=k)
    assert sorted(p.name for p in (tmp_path / "ddp").glob("step_*")) == ["step_00000003"]


def test_each_rank_takes_its_contiguous_slice_and_uneven_global_batches_are_refused():
    from sciffusion.distributed import DistributedContext

    assert [DistributedContext(r, 2).rows(8) for r in (0, 1)] == [slice(0, 4), slice(4, 8)]
    with pytest.raises(ValueError, match="batch_size=8 is not divisible by the world size 3"):
        DistributedContext(2, 3).rows(8)
