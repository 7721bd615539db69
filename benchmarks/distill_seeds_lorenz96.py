"""A distilled student of the shipped Lorenz-96 SEEDS emulator against its teacher.

The teacher is the pretrained emulator (``sciffusion.emulators.pretrain.default_checkpoint()``,
its calibrated default sampler: Heun 8 steps = 15 calls, temperature from calibration). The
student is ``sciffusion.distill.distill`` of its denoiser at the public defaults (trajectory
method, 64 teacher levels, 20,000 trajectories, 4,000 steps) on the teacher's own training pairs
(simulated with the training seed of ``pretrain``), and samples through ``with_student`` (the
teacher's temperature kept). Both generate 31 members from 2 seeds for held-out initial times
(the demo's seed 300); the table gives CRPS, spread-skill and RMSE from ``ensemble_skill``, and
the calls per member.

    python benchmarks/distill_seeds_lorenz96.py [--calls 1 2 4] [--n-init 64] [--steps 4000]

Writes benchmarks/results/distill_seeds_lorenz96.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from _run_meta import run_meta
from sciffusion.diffusion import CountingDenoiser
from sciffusion.distill import distill
from sciffusion.emulators import EnsembleEmulator, ensemble_skill
from sciffusion.emulators.ensemble import _lead_per_sample
from sciffusion.emulators.pretrain import TRAIN_SEED, default_checkpoint, lorenz96_ensembles
from sciffusion.emulators.seeds_data import SeedPairs, ensemble_tensor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--n-train", type=int, default=400, help="training initial times (pretrain's)")
    parser.add_argument("--n-init", type=int, default=64, help="held-out initial times")
    parser.add_argument("--members", type=int, default=31)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.time()
    teacher = EnsembleEmulator.load(default_checkpoint())
    train = lorenz96_ensembles(args.n_train, TRAIN_SEED)
    c = teacher.coder
    dims = ["init_time", "lead_time"]
    pairs = SeedPairs(c, ensemble_tensor(train, c.variables, dims, c.grid_dims, "member"),
                      torch.from_numpy(_lead_per_sample(train, c, dims)), seed=0)
    test = lorenz96_ensembles(args.n_init, 300)
    seeds, truth = test[["x"]].isel(member=list(range(c.n_seeds))), test["x_truth"]
    clim = {"clim_mean": float(truth.mean()), "clim_std": float(truth.std())}
    rows = {}

    def score(label, emu, calls):
        counted = CountingDenoiser(emu.denoiser)
        emu.denoiser = counted
        t0 = time.perf_counter()
        ens = emu.generate(seeds, args.members, seed=1, batch_size=len(test.init_time) * len(test.lead_time) * args.members,
                           progress=False)
        gen_s = time.perf_counter() - t0
        skill = ensemble_skill(ens["x"], truth, **clim)
        rows[label] = {"calls_per_member": counted.nfe, "generate_s": gen_s, **{k: float(v) for k, v in skill.items()
                                                                              if isinstance(v, (int, float, np.floating))}}
        print(f"{label:28s} calls {counted.nfe:3d}  CRPS {rows[label]['crps']:.4f}  SSR {rows[label]['ssr']:.3f}"
              f"  RMSE {rows[label]['rmse']:.4f}", flush=True)

    score("teacher (default sampler)", teacher, None)
    teacher = EnsembleEmulator.load(default_checkpoint())
    for calls in args.calls:
        t0 = time.time()
        student = distill(teacher.denoiser, pairs, calls=calls, steps=args.steps, progress=False, threads=args.threads)
        train_s = time.time() - t0
        score(f"student, {calls} call(s)", teacher.with_student(student), calls)
        rows[f"student, {calls} call(s)"]["train_s"] = train_s
    t = rows["teacher (default sampler)"]
    for label, r in rows.items():
        r["crps_ratio_to_teacher"] = r["crps"] / t["crps"]
        r["ssr_minus_teacher"] = r["ssr"] - t["ssr"]
    out = Path(__file__).parent / "results" / "distill_seeds_lorenz96.json"
    out.write_text(json.dumps({"meta": {**run_meta(), "wall_s": time.time() - t_start}, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
