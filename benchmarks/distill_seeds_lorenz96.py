"""A distilled student of the shipped Lorenz-96 SEEDS emulator against its teacher.

The teacher is the pretrained emulator (``sciffusion.emulators.pretrain.default_checkpoint()``,
its calibrated default sampler: Heun 8 steps = 15 calls, temperature from calibration). The
student is ``sciffusion.distill.distill`` of its denoiser at the public defaults (trajectory
method, 64 teacher levels, 20,000 trajectories, 4,000 steps) on the teacher's own training pairs
(simulated with the training seed of ``pretrain``), and samples through ``with_student``. Each
student is scored twice: with the teacher's temperature (what ``with_student`` keeps) and with
its own temperature, calibrated exactly as ``pretrain`` calibrated the teacher's:
``calibrate_spread(emu, val.isel(member=[0, 1]), val.x.isel(member=2), n_members=16)`` on
pretrain's 16 validation initial times (``VALIDATION_SEED``), target spread-skill 1 against the
held-out physics member. The same search is rerun for the teacher (not applied) to show the
procedure reproduces its shipped temperature. All then generate 31 members from 2 seeds for
held-out test initial times (the demo's seed 300), scored once; the table gives CRPS,
spread-skill and RMSE from ``ensemble_skill``, and the calls per member; a reference row scores
the test's 31-member physics ensemble itself (whose spread the calibration matches).

The students are kept in ``--out-dir`` (``calls<N>_steps<S>_traj<T>``, ``distill``'s resumable
runs): a rerun reuses a finished student (and resumes an interrupted one) instead of distilling
again, and reports the distillation time recorded when it was trained: wall seconds, and the
process's CPU seconds (with ``--threads 1`` close to its wall time on an unshared core, whatever
else the machine ran). Delete a run after changing anything else about it (teacher, trajectories).
``--distill-only`` distils into ``--out-dir`` and stops (students of different ``--calls`` can
be distilled in parallel processes this way, then scored by one run).

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

from _distill_run import timed_distill
from _run_meta import run_meta
from sciffusion.diffusion import CountingDenoiser
from sciffusion.emulators import EnsembleEmulator, ensemble_skill
from sciffusion.emulators.calibrate import DEFAULT_VALUES, calibrate_spread
from sciffusion.emulators.ensemble import _lead_per_sample
from sciffusion.emulators.pretrain import TRAIN_SEED, VALIDATION_SEED, default_checkpoint, lorenz96_ensembles
from sciffusion.emulators.seeds_data import SeedPairs, ensemble_tensor

ROOT = Path(__file__).resolve().parents[1]
TEACHER = "teacher (default sampler)"
PHYSICS = "physics ensemble (all 31 members, reference)"


def student_run(args, calls, teacher, pairs):
    """The ``calls``-call student at the benchmark's settings, its distillation seconds, and whether it was reused."""
    run = Path(args.out_dir) / f"calls{calls}_steps{args.steps}_traj{args.n_trajectories}"
    return timed_distill(run, teacher=teacher.denoiser, train_data=pairs, calls=calls, steps=args.steps,
                         n_trajectories=args.n_trajectories, progress=False, threads=args.threads,
                         config={"benchmark": "distill_seeds_lorenz96", "teacher": "default_checkpoint()"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--n-train", type=int, default=400, help="training initial times (pretrain's)")
    parser.add_argument("--n-validation", type=int, default=16, help="validation initial times (pretrain's)")
    parser.add_argument("--n-init", type=int, default=64, help="held-out initial times")
    parser.add_argument("--members", type=int, default=31)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--n-trajectories", type=int, default=20000)
    parser.add_argument("--temperatures", type=float, nargs="+", default=None,
                        help=f"the calibration grid (calibrate_spread's values=; default {DEFAULT_VALUES['temperature']})")
    parser.add_argument("--out-dir", default=str(ROOT / "runs" / "distill_seeds_lorenz96"),
                        help="the students' distillation runs (reused and resumed)")
    parser.add_argument("--distill-only", action="store_true",
                        help="only distil (or finish) the students of --calls into --out-dir, e.g. several in parallel")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t_start, meta = time.time(), run_meta()  # the load at the start of the run
    teacher = EnsembleEmulator.load(default_checkpoint())
    train = lorenz96_ensembles(args.n_train, TRAIN_SEED)
    c = teacher.coder
    dims = ["init_time", "lead_time"]
    pairs = SeedPairs(c, ensemble_tensor(train, c.variables, dims, c.grid_dims, "member"),
                      torch.from_numpy(_lead_per_sample(train, c, dims)), seed=0)
    if args.distill_only:
        for calls in args.calls:
            _, took, reused = student_run(args, calls, teacher, pairs)
            print(f"student, {calls} call(s): distilled in {took['wall_s']:.0f} s wall, {took['cpu_s']:.0f} s CPU"
                  f"{' (reused)' if reused else ''}", flush=True)
        return
    # validation: pretrain's calibration data and observation (emulation mode: a held-out physics member)
    val = lorenz96_ensembles(args.n_validation, VALIDATION_SEED)
    k = c.n_seeds
    val_seeds, val_obs = val.isel(member=list(range(k))), val[["x"]].isel(member=k, drop=True)
    grid = list(DEFAULT_VALUES["temperature"] if args.temperatures is None else args.temperatures)
    validation = {"data": f"lorenz96_ensembles({args.n_validation}, VALIDATION_SEED={VALIDATION_SEED}): seeds = "
                          f"members 0..{k - 1}, observation = member {k}; calibrate_spread(n_members=16, seed=0, "
                          "target=1, refine=True)", "temperatures": grid, "calibrations": {}}

    def calibrate(label, emu, apply=True):
        cal = calibrate_spread(emu, val_seeds, val_obs, n_members=16, values=grid, apply=apply)
        validation["calibrations"][label] = {"temperature": cal.value, "ssr": cal.ssr,
                                             "tried": {f"{t:.6g}": s for t, s in sorted(cal.tried.items())}}
        print(f"validation: {label:45s} {cal}", flush=True)
        return cal

    # the same search for the teacher, not applied: does it give back the shipped temperature?
    shipped = teacher.sampler["temperature"]
    calibrate(TEACHER, EnsembleEmulator.load(default_checkpoint()), apply=False)
    validation["calibrations"][TEACHER]["shipped_temperature"] = shipped

    test = lorenz96_ensembles(args.n_init, 300)
    seeds, truth = test[["x"]].isel(member=list(range(k))), test["x_truth"]
    clim = {"clim_mean": float(truth.mean()), "clim_std": float(truth.std())}
    rows = {}

    def score(label, emu, **extra):
        counted = CountingDenoiser(emu.denoiser)
        emu.denoiser = counted
        t0 = time.perf_counter()
        ens = emu.generate(seeds, args.members, seed=1, batch_size=len(test.init_time) * len(test.lead_time) * args.members,
                           progress=False)
        gen_s = time.perf_counter() - t0
        skill = ensemble_skill(ens["x"], truth, **clim)
        rows[label] = {"calls_per_member": counted.nfe, "temperature": float(emu.sampler["temperature"]),
                       "generate_s": gen_s, **extra,
                       **{k: float(v) for k, v in skill.items() if isinstance(v, (int, float, np.floating))}}
        print(f"{label:52s} calls {counted.nfe:3d}  T {rows[label]['temperature']:.3f}  CRPS {rows[label]['crps']:.4f}"
              f"  SSR {rows[label]['ssr']:.3f}  RMSE {rows[label]['rmse']:.4f}", flush=True)

    score(TEACHER, teacher)
    physics = ensemble_skill(test["x"], truth, **clim)  # what the emulation-mode calibration matches the spread of
    rows[PHYSICS] = {"calls_per_member": None, **{k: float(v) for k, v in physics.items()
                                                  if isinstance(v, (int, float, np.floating))}}
    print(f"{PHYSICS:52s} CRPS {physics['crps']:.4f}  SSR {physics['ssr']:.3f}  RMSE {physics['rmse']:.4f}", flush=True)
    teacher = EnsembleEmulator.load(default_checkpoint())
    for calls in args.calls:
        student, took, reused = student_run(args, calls, teacher, pairs)
        timing = {"distill_wall_s": took["wall_s"], "distill_cpu_s": took["cpu_s"], "student_reused": reused}
        score(f"student, {calls} call(s), teacher's temperature", teacher.with_student(student), **timing)
        own = teacher.with_student(student)
        calibrate(f"student, {calls} call(s)", own)
        score(f"student, {calls} call(s), own calibrated temperature", own, **timing)
    t = rows[TEACHER]
    for label, r in rows.items():
        r["crps_ratio_to_teacher"] = r["crps"] / t["crps"]
        r["ssr_minus_teacher"] = r["ssr"] - t["ssr"]
    out = Path(__file__).parent / "results" / "distill_seeds_lorenz96.json"
    out.write_text(json.dumps({"meta": {**meta, "wall_s": time.time() - t_start},
                               "validation": validation, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
