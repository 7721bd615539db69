"""Few-call students of the shipped Kolmogorov rollout emulator against their teacher (issue 21).

Teacher: the autoregressive emulator with the forcing pattern trained on an H100
(``benchmarks/models/rollout_kolmogorov_ar_pattern_gpu``, U-Net [32, 64, 128]) at the sampler it was
saved with when these runs were made (Heun, 6 steps from ``sigma_max = 10``: 11 network calls per
rollout step; ``FORMER_SAMPLER``: the model's default is now another, see distill_rollout_schedule.py). Students:
``sciffusion.distill.distill`` of its denoiser (trajectory method, the student starts from the
teacher's weights), sampling through ``Rollout.with_student``. ``--teacher-ode default`` (default)
distils the teacher's own sampler (its 6 levels: 1, 2 or 3 calls, e.g. ``--calls 3 2``);
``--teacher-ode fine`` distils ``distill``'s public-default ODE (64 levels from sigma_max 80; 2 and 4
calls), the setting of the first runs in the results JSON.

Data: the four physics runs of ``rollout_kolmogorov.py`` (same seed, same solver, its ``physics``
cache format): run A is the test run, run B the validation run, runs C and D are the teacher's
training runs. The distillation conditions are the teacher's own training pairs (``training_pairs``
of runs C and D, the teacher's coder, the forcing pattern), ``--n-trajectories`` of them evenly
spaced over the first ``--steps`` + 1 times of C and D; the test run is never used to train.

Scores (the functions of ``rollout_kolmogorov.py``, imported): a ``--steps``-step rollout from run A's
first state (seed 0; ``--climate-seeds`` more seeds show how much the figures move with the noise), its time-mean and variance bias (RMS over the grid) and energy-spectrum error against
run A over the same times, next to physics floors (runs B, C, D against A over the same times: how
much two independent runs of this length differ); fair CRPS and spread-skill over ``--leads`` steps
(``--n-init`` initial states of run A x ``--members`` members); network calls per step (counted) and
ms per rollout step (1 member; per member in a batch of 8), best of ``--repeats`` repeats
interleaved across teacher and students in this process. The same skill on run B (fewer initial
states and leads) is the validation record, on which the distillation length (300 steps over 150:
spread-skill nearer the teacher's, CRPS no worse) was chosen.

CPU budget (2 shared cores, 1 thread): the public defaults of ``distill`` (20,000 trajectories of
127 teacher calls, 4,000 steps of batch 256) would take ~18 h here (~12 ms per teacher call per
member, ~35 ms per member forward + backward), so this script reduces n_trajectories, steps and
batch size (flags below, recorded in the JSON), rolls out 1,000 steps instead of
``rollout_kolmogorov.py``'s 10,000 and scores 4 x 8 members over 20 leads instead of 8 x 8 over 50.
The 2-call student reuses the 4-call run's teacher trajectories (the same ODE solves from the same
seed: its levels are every other one of those; written to its ``out_dir`` as ``distill`` would
have, so ``distill`` finds them cached).

    python benchmarks/distill_rollout_kolmogorov.py                # ~30 min on one idle core, ~70 on a loaded one
    python benchmarks/distill_rollout_kolmogorov.py --distill-steps 150 --work /tmp/d150   # the shorter run
    python benchmarks/distill_rollout_kolmogorov.py --quick        # smoke run (nothing written to results/)
    python benchmarks/distill_rollout_kolmogorov.py --fine-teacher # diagnostic: the teacher at the students' target ODE

On a GPU lease (``benchmarks/gpu_issue21_device_rows.sh``), the students at ``distill``'s public
defaults (20,000 trajectories, 4,000 steps, batch 256), each trajectory conditioned on a state of its
own from 40 fresh physics runs, then scored here on the CPU from what the lease brought back:

    python benchmarks/distill_rollout_kolmogorov.py --stage distill --device cuda --n-trajectories 20000 \
        --distill-steps 4000 --batch-size 256 --condition-runs 40 --work /tmp/w --export $OUT/students
    python benchmarks/distill_rollout_kolmogorov.py --stage validate --n-trajectories 20000 --distill-steps 4000 \
        --batch-size 256 --condition-runs 40 --students-from DIR --test-seed 31 --climate-members 8 --work runs/drk_gpu

Rerunning with the same ``--work`` directory resumes: finished distillations and scores are kept there.
Writes benchmarks/results/distill_rollout_kolmogorov.json: one entry of ``runs`` per
(n_trajectories, steps), merged with the entries already there.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from _run_meta import run_meta
from rollout_kolmogorov import SETUP, _timed, bias, climate, ensemble_skill, init_state, pattern, physics
from sciffusion.data.batches import TensorPairs
from sciffusion.diffusion import CountingDenoiser
from sciffusion.distill import distill
from sciffusion.emulators import Rollout
from sciffusion.emulators.rollout import training_pairs
from sciffusion.systems import KolmogorovFlow

HERE = Path(__file__).parent
TEACHER = HERE / "models" / "rollout_kolmogorov_ar_pattern_gpu"
# The sampler the model was saved with when this script's runs were made (its records and the prepared
# lease, gpu_issue21_device_rows.sh, are about that map); the model's default is now DPM-Solver++(2M) 8
# steps with the centred start, whose students are distill_rollout_schedule.py's.
FORMER_SAMPLER = {"method": "heun", "steps": 6, "sigma_min": 0.002, "sigma_max": 10.0, "start": "noise"}


def load_teacher() -> Rollout:
    """The shipped rollout model at FORMER_SAMPLER, the teacher of this script's students."""
    teacher = Rollout.load(TEACHER)
    teacher.sampler = dict(FORMER_SAMPLER)
    return teacher
RESULTS = HERE / "results" / "distill_rollout_kolmogorov.json"
DISTILL_DEFAULTS = {"method": "trajectory", "teacher_steps": 64, "n_trajectories": 20000, "steps": 4000,
                    "batch_size": 256, "lr": 3e-4, "ema_decay": 0.99, "sigma_max": 80.0}


def run_pairs(teacher: Rollout, runs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The (normalised increment, condition) pairs of physics ``runs`` ``(S, T, y, x)`` with the teacher's
    coder and the static forcing pattern (``training_pairs``)."""
    x = runs[:, :, None].astype(np.float64)  # (S, T, C=1, y, x)
    f = np.broadcast_to(pattern()["forcing_pattern"].values[None, None, None], x.shape).copy()
    return training_pairs(teacher.coder, x, f)


def teacher_pairs(teacher: Rollout, traj: np.ndarray, n: int) -> TensorPairs:
    """``n`` of the teacher's training pairs (normalised increment, condition), evenly spaced over
    runs C and D (``traj[2:4]``) with the teacher's coder and the static forcing pattern."""
    return evenly(*run_pairs(teacher, traj[2:4]), n)


def evenly(target: torch.Tensor, cond: torch.Tensor, n: int) -> TensorPairs:
    """``n`` of the pairs (all if fewer), evenly spaced."""
    idx = torch.from_numpy(np.linspace(0, len(target) - 1, min(n, len(target))).round().astype(np.int64))
    return TensorPairs(target[idx].contiguous(), cond[idx].contiguous())


def reuse_trajectories(src: Path, dst: Path, stride: int) -> None:
    """The teacher states of ``src`` (distill's ``trajectories.safetensors``) at every ``stride``-th kept
    level, written where ``distill`` looks for its own (same seed, same ODE solves: the same states)."""
    from safetensors.torch import load_file, save

    from sciffusion.checkpoint import atomic_write_bytes

    if (dst / "trajectories.safetensors").exists():
        return
    states = load_file(src / "trajectories.safetensors")["states"]
    dst.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dst / "trajectories.safetensors", save({"states": states[:, ::stride].contiguous()}))


def calls_per_step(model: Rollout, traj: np.ndarray, forcings, n: int = 3) -> float:
    m = copy.copy(model)
    m.denoiser = CountingDenoiser(model.denoiser)
    m.rollout(init_state(traj, 0, 0), n, progress=False, forcings=forcings)
    return m.denoiser.nfe / n


def climate_seeds(model: Rollout, traj: np.ndarray, args, kf, res: dict) -> dict:
    """Add the climate figures of rollouts with seeds ``1 .. --climate-seeds - 1`` (seed 0's are
    ``res``'s own) to ``res["climate_by_seed"]``: how much the figures move with the noise alone."""
    keys = ("mean_bias_rms", "var_bias_rms", "spectrum_error", "energy_mean", "energy_std")
    by_seed = res.setdefault("climate_by_seed", [{"seed": 0, **{k: res.get(k) for k in keys}}])
    for seed in range(len(by_seed), args.climate_seeds):
        try:
            x = model.rollout(init_state(traj, 0, 0), args.steps, n_members=1, seed=seed, progress=False,
                              forcings=pattern()).vorticity.values[0]
            by_seed.append({"seed": seed, **bias(climate(x, kf), climate(traj[0], kf))})
        except FloatingPointError as exc:
            by_seed.append({"seed": seed, "diverged": str(exc)})
    return res


def score(model: Rollout, traj: np.ndarray, args, kf, log, label: str) -> dict:
    """Climate of a ``--steps`` rollout against run A, skill on run A (test) and run B (validation)."""
    forcings = pattern()
    res = {"calls_per_step": calls_per_step(model, traj, forcings), "sampler": model.sampler}
    t0 = time.perf_counter()
    res["validation_skill_run_B"] = ensemble_skill(model, traj[1:2], args.val_n_init, args.members, args.val_leads, forcings)
    t1 = time.perf_counter()
    m = args.climate_members
    try:
        x = model.rollout(init_state(traj, 0, 0), args.steps, n_members=m, seed=0, progress=False,
                          forcings=forcings).vorticity.values
    except FloatingPointError as exc:
        x, res["diverged"] = np.full(1, np.nan), str(exc)
    t2 = time.perf_counter()
    res.update(rollout_s=t2 - t1, finite=bool(np.isfinite(x).all()))
    if res["finite"]:
        ref = climate(traj[0], kf)
        res.update(bias(climate(x.reshape(-1, *x.shape[2:]), kf), ref))  # m = 1: the single rollout's figures
        if m > 1:  # each member's figures: a 1,000-step rollout's expected figure and its spread
            res["climate_per_member"] = [bias(climate(xi, kf), ref) for xi in x]
            res["climate_pooled_over_members"] = m
    res["skill"] = ensemble_skill(model, traj[:1], args.n_init, args.members, args.leads, forcings)
    res["score_s"] = time.perf_counter() - t0
    log(f"{label}: {res['calls_per_step']:.0f} calls/step, rollout {res['rollout_s']:.0f} s, scored in {res['score_s']:.0f} s")
    return res


def fresh_run(n_steps: int, seed: int, n_runs: int = 1, device: str = "cpu") -> np.ndarray:
    """``n_runs`` physics runs ``(n_runs, n_steps + 1, 32, 32)`` set up like ``physics``'s four (same flow,
    spin-up and output interval) from initial-state seed ``seed``: runs no model or choice has seen."""
    kf = KolmogorovFlow(n=SETUP["n"], reynolds=SETUP["reynolds"], drag=SETUP["drag"], k_forcing=SETUP["k_forcing"],
                        device=device)
    x = kf.step(kf.initial_state(n_runs, torch.Generator().manual_seed(seed)), SETUP["spinup_steps"])
    out = np.empty((n_runs, n_steps + 1, SETUP["n"], SETUP["n"]), np.float32)
    out[:, 0] = x.cpu().numpy()
    for k in range(1, n_steps + 1):
        x = kf.step(x, SETUP["every"])
        out[:, k] = x.cpu().numpy()
    return out


def condition_pairs(teacher: Rollout, n: int, n_runs: int, seed: int, device: str) -> TensorPairs:
    """``n`` pairs from ``n_runs`` fresh physics runs (seed ``seed``) of ``ceil(n / n_runs)`` steps, so every
    teacher trajectory gets a condition of its own (runs C and D give at most 2 x ``--steps``, and
    neighbouring states of one run are alike)."""
    return evenly(*run_pairs(teacher, fresh_run(-(-n // n_runs), seed, n_runs, device)), n)


def member_ratio(r: dict, t: dict, key: str, n_boot: int = 2000) -> dict:
    """Mean over members of a student's per-member climate figure over the teacher's, with a 95%
    bootstrap interval (members resampled independently for each model; the reference run is common)."""
    a = np.array([c[key] for c in r["climate_per_member"]])
    b = np.array([c[key] for c in t["climate_per_member"]])
    g = np.random.default_rng(0)
    boot = [a[g.integers(0, len(a), len(a))].mean() / b[g.integers(0, len(b), len(b))].mean() for _ in range(n_boot)]
    return {"ratio": float(a.mean() / b.mean()), "ci95": [float(v) for v in np.percentile(boot, [2.5, 97.5])],
            "student_mean": float(a.mean()), "teacher_mean": float(b.mean()),
            "student_sd": float(a.std(ddof=1)), "teacher_sd": float(b.std(ddof=1))}


def map_error(teacher: Rollout, student, out: Path, pairs: TensorPairs, traj: np.ndarray, teacher_steps: int,
              ode: dict, n: int = 64) -> dict:
    """How closely a student reproduces its teacher's map from noise to sample, in the normalised
    increment's units: RMS difference of the end states from the same start noise, on ``n`` of its
    own training trajectories and on ``n`` fresh ones conditioned on validation run B, beside the
    teacher's conditional spread there (8 conditions x 8 noise draws): the size of the lead-1 ensemble
    spread that the map error has to be small against."""
    from safetensors.torch import load_file

    from sciffusion.diffusion import karras_sigmas, sample
    from sciffusion.distill import teacher_trajectories

    sig = karras_sigmas(teacher_steps, ode.get("sigma_min", 0.002), ode["sigma_max"], ode.get("rho", 7.0))
    method = ode.get("teacher_method", "heun")
    kept = out / "trajectories.safetensors"  # absent where the student was distilled elsewhere (--students-from)
    states = load_file(kept)["states"][:n] if kept.exists() else None
    shape = tuple(pairs.x.shape[1:])
    cond_b = run_pairs(teacher, traj[1:2])[1]
    cond_b = cond_b[torch.linspace(0, len(cond_b) - 1, n).round().long()].to(torch.float32)
    fresh = teacher_trajectories(teacher.denoiser, sig, len(sig) - 1, n, shape, cond_b, seed=123, method=method)
    eight = cond_b[torch.linspace(0, n - 1, 8).round().long()].repeat_interleave(8, 0)
    spread = teacher_trajectories(teacher.denoiser, sig, len(sig) - 1, 64, shape, eight, seed=7, method=method)[:, -1]
    spread = spread.reshape(8, 8, -1).std(1).pow(2).mean().sqrt()

    def rms(start, end, cond):
        got = sample(student, tuple(start.shape), x=start.clone(), cond=cond, **student.sampler)
        return float((got - end).pow(2).mean().sqrt())

    train = None if states is None else rms(states[:, 0], states[:, -1], pairs.cond[:n].to(states.dtype))
    return {"train": train, "fresh_run_B": rms(fresh[:, 0], fresh[:, -1], cond_b), "teacher_conditional_spread": float(spread),
            "sample_std": float(fresh[:, -1].std())}


def fine_teacher(teacher: Rollout, traj: np.ndarray, args) -> dict:
    """Diagnostic: the teacher sampled by the ODE its students learn (Heun on ``--teacher-steps`` Karras
    levels from ``distill``'s sigma_max = 80: 2 * teacher_steps - 1 calls) next to its default sampler,
    on the validation run B (``--val-n-init`` initial states, ``--fine-teacher-leads`` leads)."""
    forcings, out = pattern(), {}
    fine = {**teacher.sampler, "method": "heun", "steps": args.teacher_steps, "sigma_min": 0.002,
            "sigma_max": DISTILL_DEFAULTS["sigma_max"], "start": "noise"}
    for label, sampler in (("default", teacher.sampler), ("distillation ODE", fine)):
        m = copy.copy(teacher)
        m.sampler = sampler
        out[label] = {"sampler": sampler, "calls_per_step": calls_per_step(m, traj, forcings, n=1),
                      "validation_skill_run_B": ensemble_skill(m, traj[1:2], args.val_n_init, args.members,
                                                               args.fine_teacher_leads, forcings)}
    return out


def cost(models: dict, traj: np.ndarray, repeats: int, n: int = 10) -> dict:
    """Seconds per rollout step (1 member; per member of 8), best of ``repeats``, interleaved across models."""
    forcings, kf = pattern(), KolmogorovFlow(n=SETUP["n"])
    x0 = torch.as_tensor(traj[0, 0:1], dtype=torch.float64)
    best = {k: [np.inf, np.inf] for k in (*models, "solver")}
    for _ in range(repeats):
        best["solver"][0] = min(best["solver"][0], _timed(lambda: kf.step(x0, SETUP["every"] * n)) / n)
        for label, m in models.items():
            best[label][0] = min(best[label][0], _timed(lambda: m.rollout(init_state(traj, 0, 0), n, progress=False,
                                                                          forcings=forcings)) / n)
            best[label][1] = min(best[label][1], _timed(lambda: m.rollout(init_state(traj, 0, 0), n, n_members=8,
                                                                          progress=False, forcings=forcings)) / n / 8)
    return {k: {"s_per_step": v[0], "s_per_step_per_member_batch8": v[1] if np.isfinite(v[1]) else None}
            for k, v in best.items()}


def table(rows: dict, floors: dict) -> str:
    t = rows["teacher"]
    last = len(t["skill"]["crps"])
    head = ("", "calls", "ms/step", "x teacher", "mean bias", "/t", "var bias", "/t", "spec err", "/t",
            "CRPS@1", "CRPS@10", f"CRPS@{last}", "/t@10", "SSR@10", f"SSR@{last}", "dSSR@10")
    out = [head]
    for label, f in floors.items():
        out.append((label, "", "", "", f"{f['mean_bias_rms']:.3f}", "", f"{f['var_bias_rms']:.3f}", "",
                    f"{f['spectrum_error']:.3f}", "", "", "", "", "", "", "", ""))

    def at(r, key, lead):
        return r["skill"][key][min(lead, len(r["skill"][key])) - 1]

    for label, r in rows.items():
        ratio = lambda k: f"{r[k] / t[k]:.2f}" if r.get("finite") and t.get("finite") else "-"  # noqa: E731
        fig = lambda k: f"{r[k]:.3f}" if r.get("finite") else "diverged"  # noqa: E731
        out.append((label, f"{r['calls_per_step']:.0f}", f"{1e3 * r['cost']['s_per_step']:.1f}",
                    f"{r['cost']['s_per_step'] / t['cost']['s_per_step']:.2f}",
                    fig("mean_bias_rms"), ratio("mean_bias_rms"), fig("var_bias_rms"), ratio("var_bias_rms"),
                    fig("spectrum_error"), ratio("spectrum_error"),
                    *[f"{at(r, 'crps', k):.3f}" for k in (1, 10, last)], f"{at(r, 'crps', 10) / at(t, 'crps', 10):.3f}",
                    *[f"{at(r, 'spread_skill', k):.2f}" for k in (10, last)],
                    f"{at(r, 'spread_skill', 10) - at(t, 'spread_skill', 10):+.2f}"))
    w = [max(len(row[i]) for row in out) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(row)) for row in out)


def teacher_ode(teacher: Rollout, args) -> dict:
    """The ODE the students learn: the teacher's own sampler levels, or distill's public default."""
    if args.teacher_ode == "default":
        return {"sigma_min": teacher.sampler.get("sigma_min", 0.002), "sigma_max": teacher.sampler["sigma_max"],
                "rho": teacher.sampler.get("rho", 7.0), "teacher_method": teacher.sampler.get("method", "heun")}
    return {"sigma_max": DISTILL_DEFAULTS["sigma_max"]}


def distill_students(teacher: Rollout, pairs: TensorPairs, args, work: Path, log) -> tuple[dict, dict]:
    """``{calls: Student}`` and ``{calls: record}``, the largest first: distilled into ``work/student_CALLS``
    (resumed where a run is there; ``--export`` copies each checkpoint out), or loaded from ``--students-from``."""
    import shutil

    from sciffusion.distill import Student

    students, records, first = {}, {}, None
    for calls in sorted(args.calls, reverse=True):
        if args.students_from:
            src = Path(args.students_from) / f"student_{calls}"
            students[calls] = Student.load(src)
            rec = Path(args.students_from) / f"distill_{calls}.json"
            records[calls] = {**(json.loads(rec.read_text()) if rec.exists() else {}), "loaded_from": str(src)}
            continue
        out = work / f"student_{calls}"
        if first is not None and first[1] % calls == 0:  # its levels are every (first / calls)-th of the first's
            reuse_trajectories(first[0], out, first[1] // calls)
        latest = out / "trajectory" / "latest"
        resumed = latest.read_text().strip() if latest.exists() else None  # a longer run continues a shorter one
        t0 = time.time()
        student = distill(copy.deepcopy(teacher.denoiser).to(args.device), pairs, calls=calls, teacher_steps=args.teacher_steps,
                          n_trajectories=args.n_trajectories, steps=args.distill_steps, batch_size=args.batch_size,
                          out_dir=out, progress=False, threads=1, device=args.device, **teacher_ode(teacher, args))
        students[calls] = student.to("cpu")
        rec_path = out / f"distill_time_{args.distill_steps}.json"
        if not rec_path.exists():  # the wall time of the call that trained it (from `resumed` if set)
            rec_path.write_text(json.dumps({"distill_s": time.time() - t0, "resumed_from": resumed, "device": args.device}))
        reused = first[1] if first is not None and first[1] % calls == 0 else None
        records[calls] = {**json.loads(rec_path.read_text()), "reused_trajectories_of_calls": reused}
        log(f"student {calls}: distilled ({records[calls]['distill_s']:.0f} s)")
        first = first or (out, calls)
        if args.export:
            dst = Path(args.export) / f"student_{calls}"
            shutil.copytree(out / "student", dst, dirs_exist_ok=True)
            (Path(args.export) / f"distill_{calls}.json").write_text(json.dumps(records[calls]))
    return students, records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, nargs="+", default=None,
                   help="student calls, the largest distilled first (default: 3 2 for --teacher-ode default, 4 2 for fine)")
    p.add_argument("--steps", type=int, default=1000, help="rollout length (emulator steps of dt = 0.5)")
    p.add_argument("--n-trajectories", type=int, default=192, help="distill's n_trajectories (public default 20000)")
    p.add_argument("--distill-steps", type=int, default=300, help="distill's training steps (public default 4000)")
    p.add_argument("--batch-size", type=int, default=32, help="distill's batch size (public default 256)")
    p.add_argument("--teacher-steps", type=int, default=64,
                   help="distill's teacher_steps (public default 64; --teacher-ode default takes the sampler's)")
    p.add_argument("--teacher-ode", choices=("default", "fine"), default="default",
                   help="the ODE the students learn: 'default' = the teacher's own saved sampler (Heun, its steps and "
                        "sigma_min/sigma_max: the map from noise to sample that the teacher computes at its default "
                        "calls), 'fine' = distill's public default (Heun on --teacher-steps levels from sigma_max 80)")
    p.add_argument("--test-seed", type=int, default=None,
                   help="score on a fresh physics run from this seed (spun up like runs A-D) instead of run A")
    p.add_argument("--climate-members", type=int, default=1,
                   help="climate figures of this many --steps rollouts (one batch, seed 0) pooled, with per-member "
                        "figures and bootstrap intervals of the student / teacher ratios")
    p.add_argument("--stage", choices=("all", "teacher", "distill", "validate", "map-error"), default="all",
                   help="'teacher': score the teacher only; 'distill': train the students only (run the two in "
                        "parallel processes on one --work, then 'all' scores the rest and the cost); 'validate': "
                        "the students' skill on the validation run B only, beside the teacher's (nothing on the test run); "
                        "'map-error': only the students' map error (results/distill_rollout_kolmogorov_map_error.json)")
    p.add_argument("--n-init", type=int, default=4, help="test initial states (rollout_kolmogorov.py: 8)")
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--leads", type=int, default=20, help="scored leads (rollout_kolmogorov.py: 50)")
    p.add_argument("--val-n-init", type=int, default=2, help="validation (run B) initial states")
    p.add_argument("--val-leads", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats")
    p.add_argument("--climate-seeds", type=int, default=2, help="rollouts (seeds 0..) whose climate figures are kept")
    p.add_argument("--cache", default=str(HERE.parent / "runs" / "rollout_kolmogorov_physics.npy"), help="physics cache (rollout_kolmogorov.py's)")
    p.add_argument("--work", default=str(HERE.parent / "runs" / "distill_rollout_kolmogorov"), help="students and finished scores (resume)")
    p.add_argument("--fine-teacher", action="store_true",
                   help="only the diagnostic: the teacher's skill on run B sampled by the students' target ODE "
                        "(Heun, teacher_steps levels from sigma_max 80) and by its default; merged into the results")
    p.add_argument("--fine-teacher-leads", type=int, default=3)
    p.add_argument("--condition-runs", type=int, default=None,
                   help="take the distillation conditions from this many fresh physics runs (seed --condition-seed), "
                        "one condition per trajectory, instead of the teacher's training runs C and D")
    p.add_argument("--condition-seed", type=int, default=5000)
    p.add_argument("--device", default="cpu", help="where the distillation runs (teacher trajectories and training); "
                   "scoring stays on the CPU")
    p.add_argument("--export", default=None, help="after --stage distill, copy each student's checkpoint to "
                   "EXPORT/student_CALLS (weights and config: what --students-from reads)")
    p.add_argument("--students-from", default=None, help="score the students exported by a distillation elsewhere "
                   "(e.g. on a GPU) instead of distilling: DIR/student_CALLS")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, results not written")
    args = p.parse_args()
    if args.quick:
        args.steps, args.n_trajectories, args.distill_steps, args.batch_size = 30, 8, 3, 4
        args.n_init, args.members, args.leads, args.val_n_init, args.val_leads, args.repeats = 2, 2, 5, 2, 3, 1
        args.work = args.work + "_quick"
    torch.set_num_threads(1)
    log = lambda s: print(s, flush=True)  # noqa: E731
    t_start, work, meta = time.time(), Path(args.work), run_meta()  # the load at the start of the run
    work.mkdir(parents=True, exist_ok=True)
    if args.teacher_ode == "default":
        args.teacher_steps = int(FORMER_SAMPLER["steps"])
    if args.calls is None:
        args.calls = [3, 2] if args.teacher_ode == "default" else [4, 2]
    settings = {k: getattr(args, k) for k in ("steps", "n_trajectories", "distill_steps", "batch_size", "teacher_steps",
                                              "n_init", "members", "leads", "val_n_init", "val_leads", "repeats")}
    settings.update({k: getattr(args, k) for k in ("teacher_ode", "test_seed", "climate_members") if getattr(args, k) not in ("fine", None, 1)})
    if args.condition_runs:
        settings.update(condition_runs=args.condition_runs, condition_seed=args.condition_seed)
    prev = work / "settings.json"
    if prev.exists() and json.loads(prev.read_text()) != settings:
        p.error(f"{work} holds a run with other settings ({prev}); pass another --work")
    prev.write_text(json.dumps(settings))

    if args.stage == "distill" and args.condition_runs:  # the distillation alone needs no scoring runs
        teacher = load_teacher()
        pairs = condition_pairs(teacher, args.n_trajectories, args.condition_runs, args.condition_seed, args.device)
        log(f"conditions: {len(pairs)} from {args.condition_runs} fresh runs in {time.time() - t_start:.0f} s")
        distill_students(teacher, pairs, args, work, log)
        return
    traj = physics(args.steps, Path(args.cache) if args.cache else None)
    if args.test_seed is not None:  # run A is replaced by a fresh run; B (validation) and C, D (training) stay
        traj = np.concatenate([fresh_run(args.steps, args.test_seed), traj], 0)[[0, 2, 3, 4, 1]]
    log(f"physics: {len(traj)} runs x {traj.shape[1]} times ready in {time.time() - t_start:.0f} s")
    if args.fine_teacher:
        diag = {"meta": {**meta, "wall_s": None}, **fine_teacher(load_teacher(), traj, args)}
        diag["meta"]["wall_s"] = time.time() - t_start
        for label in ("default", "distillation ODE"):
            sk = diag[label]["validation_skill_run_B"]
            log(f"teacher, {label}: {diag[label]['calls_per_step']:.0f} calls, run B CRPS "
                f"{' / '.join(f'{v:.3f}' for v in sk['crps'])}, spread-skill {' / '.join(f'{v:.2f}' for v in sk['spread_skill'])}")
        if not args.quick:
            runs = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
            runs["diagnostic_teacher_ode"] = diag
            RESULTS.write_text(json.dumps(runs, indent=1, default=str))
        return
    kf = KolmogorovFlow(n=SETUP["n"])
    ref = climate(traj[0], kf)
    test_name = "A" if args.test_seed is None else f"test seed {args.test_seed}"
    others = ((1, "B"), (2, "C"), (3, "D")) + (((4, "A"),) if args.test_seed is not None else ())
    floors = {f"physics floor ({r} vs {test_name})": bias(climate(traj[i], kf), ref) for i, r in others}

    teacher = load_teacher()
    models, rows = {"teacher": teacher}, {}
    if args.condition_runs:
        pairs = condition_pairs(teacher, args.n_trajectories, args.condition_runs, args.condition_seed, "cpu")
    else:
        pairs = teacher_pairs(teacher, traj, args.n_trajectories)

    def scored(label: str, model: Rollout) -> dict:
        path = work / f"score_{label.replace(' ', '_').replace(',', '')}.json"
        res = json.loads(path.read_text()) if path.exists() else score(model, traj, args, kf, log, label)
        if args.climate_seeds > 1:
            res = climate_seeds(model, traj, args, kf, res)
        path.write_text(json.dumps(res))
        return res

    if args.stage == "map-error":  # how closely the students reproduce the teacher's map, nothing else
        ode = teacher_ode(teacher, args)
        students, distill_rec = distill_students(teacher, pairs, args, work, log)
        errors = {f"{calls} calls": {**map_error(teacher, student, work / f"student_{calls}", pairs, traj,
                                                 args.teacher_steps, ode), "distill": distill_rec[calls]}
                  for calls, student in students.items()}
        log(json.dumps(errors))
        if not args.quick:
            path = HERE / "results" / "distill_rollout_kolmogorov_map_error.json"
            record = json.loads(path.read_text()) if path.exists() else {}
            key = (f"n_trajectories={args.n_trajectories}, steps={args.distill_steps}, batch {args.batch_size}, "
                   + (f"{args.condition_runs} condition runs" if args.condition_runs else "runs C and D"))
            record[key] = {"meta": {**meta, "wall_s": time.time() - t_start}, "settings": settings, "students": errors}
            path.write_text(json.dumps(record, indent=1))
            log(f"wrote {path}")
        return
    if args.stage != "distill":
        rows["teacher"] = scored("teacher", teacher)
    if args.stage == "teacher":
        return
    ode = teacher_ode(teacher, args)
    students, distill_rec = distill_students(teacher, pairs, args, work, log)
    val_rec = {}
    for calls, student in students.items():
        out = work / f"student_{calls}"
        if args.stage == "distill":
            continue
        if args.stage == "validate":
            t_val = json.loads((work / "score_teacher.json").read_text())["validation_skill_run_B"]
            val = ensemble_skill(teacher.with_student(student), traj[1:2], args.val_n_init, args.members, args.val_leads,
                                 pattern())
            (work / f"validation_student_{calls}.json").write_text(json.dumps(val))
            err = map_error(teacher, student, out, pairs, traj, args.teacher_steps, ode)
            train = "-" if err["train"] is None else f"{err['train']:.3f}"
            log(f"student {calls}: map error (normalised units) train {train}, fresh {err['fresh_run_B']:.3f}; "
                f"teacher's conditional spread {err['teacher_conditional_spread']:.3f}")
            val_rec.setdefault("students", {})[f"{calls} calls"] = {
                "skill": val, "map_error": err, "crps_ratio_to_teacher": [a / b for a, b in zip(val["crps"], t_val["crps"])],
                "ssr_minus_teacher": [a - b for a, b in zip(val["spread_skill"], t_val["spread_skill"])],
                "distill": distill_rec[calls]}
            val_rec["teacher"] = t_val
            log(f"student {calls}, run B: CRPS / teacher " + " ".join(f"{a / b:.3f}" for a, b in zip(val["crps"], t_val["crps"]))
                + "; spread-skill - teacher's " + " ".join(f"{a - b:+.2f}" for a, b in zip(val["spread_skill"], t_val["spread_skill"])))
            continue
        label = f"student, {calls} calls"
        models[label] = teacher.with_student(student)
        rows[label] = scored(label, models[label])
        rows[label]["distill"] = distill_rec[calls]

    if args.stage == "validate" and not args.quick:  # the validation record, merged per (ODE, length, students)
        path = HERE / "results" / "distill_rollout_kolmogorov_validation.json"
        record = json.loads(path.read_text()) if path.exists() else {}
        key = f"teacher ODE {args.teacher_ode}, n_trajectories={args.n_trajectories}, steps={args.distill_steps}"
        if args.condition_runs:
            key += f", batch {args.batch_size}, {args.condition_runs} condition runs"
        prev = record.get(key, {}).get("students", {})
        record[key] = {"meta": {**meta, "wall_s": time.time() - t_start}, "settings": settings,
                       "validation_run": "B", **val_rec, "students": {**prev, **val_rec.get("students", {})}}
        path.write_text(json.dumps(record, indent=1))
        log(f"wrote {path}")
    if args.stage in ("distill", "validate"):
        return
    costs = cost(models, traj, args.repeats)
    for label in rows:
        rows[label]["cost"] = costs[label]
    t = rows["teacher"]

    def at(r, key, lead):
        return r["skill"][key][min(lead, len(r["skill"][key])) - 1]

    for label, r in rows.items():
        r["ratio_to_teacher"] = {k: r[k] / t[k] for k in ("mean_bias_rms", "var_bias_rms", "spectrum_error")
                                 if r.get("finite") and t.get("finite")}
        r["ratio_to_teacher"]["s_per_step"] = r["cost"]["s_per_step"] / t["cost"]["s_per_step"]
        r["crps_ratio_to_teacher"] = [a / b for a, b in zip(r["skill"]["crps"], t["skill"]["crps"])]
        r["ssr_minus_teacher"] = [a - b for a, b in zip(r["skill"]["spread_skill"], t["skill"]["spread_skill"])]
        r["val_crps_ratio_to_teacher"] = [a / b for a, b in zip(r["validation_skill_run_B"]["crps"],
                                                                t["validation_skill_run_B"]["crps"])]
        r["val_ssr_minus_teacher"] = [a - b for a, b in zip(r["validation_skill_run_B"]["spread_skill"],
                                                            t["validation_skill_run_B"]["spread_skill"])]
        if label != "teacher" and "climate_per_member" in r and "climate_per_member" in t:
            r["climate_member_ratio_to_teacher"] = {k: member_ratio(r, t, k) for k in ("mean_bias_rms", "var_bias_rms",
                                                                                        "spectrum_error")}
        if label != "teacher":  # issue 21: CRPS within 2%, spread-skill within +-0.05, climate figures within 10%
            cr, ds = np.array(r["crps_ratio_to_teacher"]), np.array(r["ssr_minus_teacher"])
            clim = r.get("climate_member_ratio_to_teacher", {})
            r["targets"] = {"crps_ratio_mean_over_leads": float(cr.mean()), "crps_ratio_range": [float(cr.min()), float(cr.max())],
                            "crps_within_2pct_every_lead": bool((np.abs(cr - 1) <= 0.02).all()),
                            "crps_within_2pct_mean_over_leads": bool(abs(cr.mean() - 1) <= 0.02),
                            "ssr_diff_range": [float(ds.min()), float(ds.max())],
                            "ssr_within_0.05_every_lead": bool((np.abs(ds) <= 0.05).all()),
                            "climate_within_10pct": {k: bool(abs(v["ratio"] - 1) <= 0.10) for k, v in clim.items()}}
    print(table(rows, floors))
    result = {"meta": {**meta, "wall_s": time.time() - t_start}, "setup": {**SETUP, "emulator_dt": 0.5, "threads": 1},
              "teacher": str(TEACHER.relative_to(HERE.parent)), "settings": settings, "distill_public_defaults": DISTILL_DEFAULTS,
              "deviations": {"n_trajectories": args.n_trajectories, "steps": args.distill_steps, "batch_size": args.batch_size,
                             "rollout_steps": args.steps, "reason": "CPU time (1 thread on a shared 2-core machine)"
                             if not args.students_from else "students distilled on another device (see each row's 'distill')"},
              "solver_s_per_step": costs["solver"]["s_per_step"], "floors": floors, "rows": rows}
    if args.quick:
        print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1, default=str)[:2000])
        return
    runs = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    key = f"n_trajectories={args.n_trajectories}, steps={args.distill_steps}"
    if args.teacher_ode == "default":
        key += f", teacher ODE = its default sampler, test seed {args.test_seed}, {args.climate_members} climate members"
    if args.condition_runs:
        key += f", batch {args.batch_size}, {args.condition_runs} condition runs"
    runs.setdefault("runs", {})[key] = result
    RESULTS.write_text(json.dumps(runs, indent=1, default=str))
    log(f"wrote {RESULTS} ({time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
