"""Cost table of issue 21, Kolmogorov 64 x 64 row: a generated member against a tuned-solver member on CPU.

Setting (benchmarks/seeds_kolmogorov.py's, at 64 x 64): truth KolmogorovFlow(n=64, Re=100, drag 0.1),
forecast model Re=80, drag 0.12; 31 members from perturbed truth states (vorticity perturbation
0.1), leads 1..4 time units, spin-up 20. Physics ensembles come from the reference solver (dt=0.01,
float64): training initial times (seed 101, ``--train-members`` members each, fewer than 31 to keep
the data within ~20 min of one core), validation (seed 102, 31 members) and test (seed 200, 31
members). The *tuned* solver (dt = 1/19, float32: benchmarks/tuned_solvers.py, docs/systems.md)
runs the same 31 perturbed initial states of the test set (the reference ensemble's lead 0).

The teacher is ``EnsembleEmulator.fit`` in emulation mode at its public defaults (2,000 steps,
batch 128, lr 2e-3) except the backbone: ``net={"name": "EOFMLP"}`` (latent diffusion on EOFs)
instead of the UNet2d default, which costs more per member on CPU than the solver; ``--width`` /
``--depth`` / ``--rank`` / ``--cond-rank`` override EOFMLP's defaults (128 / 128 EOFs, width 512,
depth 4) and the JSON records what was passed.
Its sampler is the library default (Heun, 12 steps = 23 calls); its temperature is calibrated on
the validation split (``calibrate_spread`` against a held-out physics member, spread-skill 1, the
grid of seeds_kolmogorov.py extended by 3.2 and 4.0). Students are ``sciffusion.distill.distill`` of the teacher's denoiser
at the public defaults on the teacher's own training pairs (``LatentPairs``), sampled through
``with_student``; each student's temperature is calibrated on validation the same way.

Scores (test split, once): CRPS / spread-skill of physics 31 (reference solver), tuned solver 31,
teacher 31 and student 31 (the emulators from members 0 and 1 as seeds), and the CRPS ratio of
each to the tuned solver with a 95% bootstrap interval over test initial times (paired). Cost:
milliseconds per member per forecast (all 4 leads) on CPU, 1 thread, in this process, best of
``--repeats`` interleaved repeats: the tuned solver on a 31-member batch (the reference solver on
8 members: its cost per member is the same at 8 and 31 on 1 thread, and it is 10x slower), the
emulators generating 31 members for the 4 leads of one initial time (encoding, sampling, decoding).

    OMP_NUM_THREADS=1 python benchmarks/cost_kolmogorov.py --cache /tmp/h2_cache --width 384 --depth 3
    OMP_NUM_THREADS=1 python benchmarks/cost_kolmogorov.py --quick --cache /tmp/quick   # smoke run, not a result

The simulated data took about 25 CPU-minutes (48 min of wall time on 2 shared cores at load ~9,
``--data-only train`` and ``--data-only val test`` side by side, then ``--data-only tuned``); the
rest (teacher, calibrations, 2-call student at distill's defaults, scores, timing) about 25 min.
``--cache`` keeps the ensembles and the training runs, so a rerun resumes them.

Writes benchmarks/results/cost_kolmogorov.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _run_meta import run_meta  # noqa: E402
from seeds_kolmogorov import SETUP as SETUP32  # noqa: E402

from sciffusion.systems import KolmogorovFlow, simulate  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "cost_kolmogorov.json"
SETUP = {**SETUP32, "n": 64}
TUNED = {"dt": 1 / 19, "dtype": "float32", "source": "benchmarks/results/tuned_solvers.json (kolmogorov, n=64)"}


def ensembles(n_init: int, seed: int, members: int) -> xr.Dataset:
    """Reference-solver physics ensembles of the imperfect model with the truth, lead 0 (the perturbed
    initial states) kept: vorticity (init_time, lead_time 0..4, member, y, x)."""
    s = SETUP
    truth, model = KolmogorovFlow(n=s["n"], **s["truth"]), KolmogorovFlow(n=s["n"], **s["forecast"])
    ds = simulate(truth, forecast_system=model, n_members=members, n_init=n_init, n_leads=s["n_leads"],
                  lead_interval=s["lead_interval"], perturbation=s["perturbation"], spinup=s["spinup"], seed=seed,
                  progress=False)
    return ds.drop_vars("chunk_done", errors="ignore").load()


def cached(directory, name: str, n_init: int, seed: int, members: int) -> xr.Dataset:
    """``ensembles(...)`` kept as netCDF in ``directory`` (reused when it exists)."""
    if directory is None:
        return ensembles(n_init, seed, members)
    path = Path(directory) / f"{name}_n{SETUP['n']}_{n_init}x{members}_{seed}.nc"
    if path.exists():
        return xr.open_dataset(path).load()
    t0 = time.perf_counter()
    ds = ensembles(n_init, seed, members)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path)
    print(f"simulated {name} ({n_init} x {members} members) in {time.perf_counter() - t0:.0f} s", flush=True)
    return ds

TEMPERATURES = (0.6, 0.8, 1.0, 1.25, 1.6, 2.0, 2.5, 3.2, 4.0)  # seeds_kolmogorov.py's grid of the spread knob, extended


def leads(ds: xr.Dataset) -> xr.Dataset:
    return ds.isel(lead_time=slice(1, None))


def tuned_ensemble(test: xr.Dataset) -> xr.DataArray:
    """The tuned solver's 31 members from the reference ensemble's own perturbed initial states (lead 0)."""
    s = SETUP
    model = KolmogorovFlow(n=s["n"], **s["forecast"], dt=TUNED["dt"], dtype=torch.float32)
    steps = round(s["lead_interval"] / model.dt)
    x0 = torch.from_numpy(test["vorticity"].isel(lead_time=0).values)  # (init, member, y, x)
    out = np.stack([model.integrate(x0[i].float(), s["n_leads"], steps)[:, 1:].transpose(0, 1).double().numpy()
                    for i in range(x0.shape[0])])  # (init, lead, member, y, x)
    ref = leads(test)["vorticity"]
    return xr.DataArray(out, coords=ref.coords, dims=ref.dims, name="vorticity")


def tuned_name(n_init: int, seed: int, members: int) -> str:
    return f"test_n{SETUP['n']}_{n_init}x{members}_{seed}"


def cached_tuned(directory, test: xr.Dataset, name: str) -> xr.DataArray:
    """``tuned_ensemble(test)``, kept as netCDF in ``directory`` (reused when it exists)."""
    if directory is None:
        return tuned_ensemble(test)
    path = Path(directory) / f"tuned_{name}.nc"
    if path.exists():
        return xr.open_dataarray(path).load()
    t0 = time.perf_counter()
    ens = tuned_ensemble(test)
    ens.to_netcdf(path)
    print(f"ran the tuned solver on {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return ens


def per_init_crps(ens: xr.DataArray, truth: xr.DataArray) -> np.ndarray:
    import sciffusion.metrics as sm

    other = [d for d in truth.dims if d != "init_time"]
    return np.asarray(sm.crps_ensemble(ens.astype(np.float64), truth.astype(np.float64), member_dim="member",
                                       reduce_dims=other).values, dtype=float)


def bootstrap_ratio(a: np.ndarray, b: np.ndarray, n: int = 10000, seed: int = 0) -> dict:
    """mean(a) / mean(b) and its 95% percentile interval, resampling initial times (paired)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n, len(a)))
    r = a[idx].mean(1) / b[idx].mean(1)
    return {"ratio": float(a.mean() / b.mean()), "lo95": float(np.quantile(r, 0.025)),
            "hi95": float(np.quantile(r, 0.975)), "n_boot": n, "n_init": len(a)}


def calibrate(emu, val: xr.Dataset, n_members: int, log=print) -> dict:
    from sciffusion.emulators import calibrate_spread

    t0 = time.perf_counter()
    v = leads(val)
    cal = calibrate_spread(emu, v[["vorticity"]].isel(member=[0, 1]), v[["vorticity"]].isel(member=2, drop=True),
                           n_members=n_members, batch_size=4096, values=TEMPERATURES)
    log(f"  calibrated temperature {cal.value:.3f} (spread-skill {cal.ssr:.3f}) in {time.perf_counter() - t0:.0f} s; "
        f"tried {json.dumps({f'{k:.3f}': round(x, 3) for k, x in cal.tried.items()})}")
    return {"temperature": cal.value, "ssr_vs_member": cal.ssr, "tried": {f"{k:.4f}": x for k, x in cal.tried.items()},
            "n_members": n_members, "observation": "validation physics member 2 (seeds: members 0, 1)"}


def time_costs(test: xr.Dataset, emulators: dict, repeats: int, members: int) -> dict:
    """Seconds per member forecast (all leads), 1 thread, interleaved, best of ``repeats``."""
    s = SETUP
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        solvers = {"tuned solver": KolmogorovFlow(n=s["n"], **s["forecast"], dt=TUNED["dt"], dtype=torch.float32),
                   "reference solver": KolmogorovFlow(n=s["n"], **s["forecast"])}
        x0 = torch.from_numpy(test["vorticity"].isel(init_time=0, lead_time=0).values)
        seeds = leads(test)[["vorticity"]].isel(init_time=[0], member=[0, 1])
        best = {k: float("inf") for k in [*solvers, *emulators]}
        for name, emu in emulators.items():  # warm-up
            emu.generate(seeds, members, batch_size=4096, device="cpu", progress=False)
        for name, model in solvers.items():
            model.integrate(x0.to(model.dtype), 1, 1)
        for _ in range(repeats):
            for name, model in solvers.items():  # the reference on 8 members (its cost per member does not
                x = x0.to(model.dtype)[: 8 if name == "reference solver" else None]  # depend on the batch)
                t0 = time.perf_counter()
                model.integrate(x, s["n_leads"], round(s["lead_interval"] / model.dt))
                best[name] = min(best[name], (time.perf_counter() - t0) / len(x))
            for name, emu in emulators.items():
                t0 = time.perf_counter()
                emu.generate(seeds, members, batch_size=4096, device="cpu", progress=False)
                best[name] = min(best[name], (time.perf_counter() - t0) / members)
    finally:
        torch.set_num_threads(old)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=80, help="training initial times")
    p.add_argument("--train-members", type=int, default=16, help="members per training initial time")
    p.add_argument("--n-val", type=int, default=8, help="validation initial times (31 members)")
    p.add_argument("--n-test", type=int, default=24, help="test initial times (31 members)")
    p.add_argument("--cache", help="directory for the simulated ensembles and the training runs (resumed)")
    p.add_argument("--data-only", choices=("train", "val", "test", "tuned"), nargs="+",
                   help="only simulate these splits (tuned: the tuned solver's test ensemble)")
    p.add_argument("--rank", type=int, help="EOFMLP rank (default: the library's)")
    p.add_argument("--cond-rank", type=int, help="EOFMLP cond_rank (default: the library's)")
    p.add_argument("--width", type=int, help="EOFMLP width (default: the library's)")
    p.add_argument("--depth", type=int, help="EOFMLP depth (default: the library's)")
    p.add_argument("--steps", type=int, help="teacher training steps (default: fit's)")
    p.add_argument("--batch-size", type=int, help="teacher training batch (default: fit's)")
    p.add_argument("--lr", type=float, help="teacher learning rate (default: fit's)")
    p.add_argument("--sampler-steps", type=int, help="teacher Heun steps (default: the emulator's)")
    p.add_argument("--calls", type=int, nargs="+", default=[2], help="student network calls")
    p.add_argument("--distill-steps", type=int, help="student training steps (default: distill's)")
    p.add_argument("--n-trajectories", type=int, help="teacher trajectories (default: distill's)")
    p.add_argument("--cal-members", type=int, default=16, help="members of the calibration ensembles")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smoke run (tiny sizes; not a result)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.n_train, args.train_members, args.n_val, args.n_test = 3, 4, 2, 2
        args.steps, args.distill_steps, args.n_trajectories, args.repeats = 30, 20, 64, 2
        args.rank = args.cond_rank = args.rank or 16
    m = SETUP["members"]
    spec = {"train": (args.n_train, 101, args.train_members), "val": (args.n_val, 102, m), "test": (args.n_test, 200, m)}
    if args.data_only:
        for name in args.data_only:
            if name == "tuned":
                cached_tuned(args.cache, cached(args.cache, "test", *spec["test"]), tuned_name(*spec["test"]))
            else:
                cached(args.cache, name, *spec[name])
        return 0
    from sciffusion.distill import distill
    from sciffusion.emulators import EnsembleEmulator, ensemble_skill
    from sciffusion.emulators.ensemble import LatentPairs, _lead_per_sample, latent_net
    from sciffusion.emulators.seeds_data import SeedPairs, ensemble_tensor

    t_start, meta = time.time(), run_meta()  # the load at the start of the run
    train, val, test = (cached(args.cache, name, *spec[name]) for name in ("train", "val", "test"))
    record = {"data": {k: {"n_init": v[0], "seed": v[1], "members": v[2]} for k, v in spec.items()}}
    run_dir = None if args.cache is None else Path(args.cache) / "runs"
    tag = f"{args.n_train}x{args.train_members}_r{args.rank}_{args.cond_rank}_w{args.width}_d{args.depth}_s{args.steps}" \
          f"_b{args.batch_size}_lr{args.lr}" + ("_quick" if args.quick else "")

    # -- the teacher: fit's public defaults, EOFMLP backbone ----------------------------------------
    net_kwargs = {k: getattr(args, a) for k, a in (("rank", "rank"), ("cond_rank", "cond_rank"), ("width", "width"),
                                                   ("depth", "depth")) if getattr(args, a) is not None}
    fit_kw = {k: getattr(args, k) for k in ("steps", "batch_size", "lr") if getattr(args, k) is not None}
    t0 = time.perf_counter()
    teacher = EnsembleEmulator.fit(leads(train), mode="emulation", net={"name": "EOFMLP", "kwargs": net_kwargs},
                                   threads=1, progress=False,
                                   out_dir=None if run_dir is None else run_dir / f"teacher_{tag}", **fit_kw)
    if args.sampler_steps:
        teacher.sampler["steps"] = args.sampler_steps
    lat = latent_net(teacher.denoiser)
    train_s = time.perf_counter() - t0
    last = (teacher.history[-1] if teacher.history else teacher.last_record) or {}
    print(f"teacher: trained in {train_s:.0f} s (loss {last.get('loss', float('nan')):.3f}); EOFs keep "
          f"{float(lat.explained):.3f} of the target and {float(lat.cond_explained):.3f} of the condition variance",
          flush=True)
    record["teacher"] = {"fit_overrides": {"net": {"name": "EOFMLP", "kwargs": net_kwargs}, **fit_kw},
                         "net_config": lat.config, "explained": float(lat.explained),
                         "cond_explained": float(lat.cond_explained), "train_s": train_s,
                         "final_record": last}
    record["teacher"]["calibration"] = calibrate(teacher, val, args.cal_members)
    record["teacher"]["sampler"] = dict(teacher.sampler)

    # -- students: distill at its public defaults on the teacher's training pairs --------------------
    c = teacher.coder
    dims = ["init_time", "lead_time"]
    tr = leads(train)
    pairs = LatentPairs(SeedPairs(c, ensemble_tensor(tr, c.variables, dims, c.grid_dims, "member"),
                                  torch.from_numpy(_lead_per_sample(tr, c, dims)), seed=0), lat)
    students = {}
    dkw = {k: v for k, v in (("steps", args.distill_steps), ("n_trajectories", args.n_trajectories)) if v is not None}
    for calls in args.calls:
        t0 = time.perf_counter()
        st = distill(teacher.denoiser, pairs, calls=calls, progress=False, threads=1,
                     out_dir=None if run_dir is None else run_dir / f"student{calls}_{tag}_{json.dumps(dkw, sort_keys=True)}"
                     .replace(" ", "").replace('"', "").replace(":", "-"), **dkw)
        emu = teacher.with_student(st)
        emu.sampler = {**emu.sampler}  # its own dict: calibration must not touch the teacher's
        d_s = time.perf_counter() - t0
        print(f"student {calls} call(s): distilled in {d_s:.0f} s", flush=True)
        students[f"student {calls}"] = emu
        record[f"student {calls}"] = {"distill_overrides": dkw, "distill_s": d_s, "calls": calls,
                                      "inherited_temperature": teacher.sampler["temperature"],
                                      "calibration": calibrate(emu, val, args.cal_members)}
        record[f"student {calls}"]["sampler"] = {k: (v if not torch.is_tensor(v) else v.tolist())
                                                 for k, v in emu.sampler.items()}

    # -- score on the test initial times, once ------------------------------------------------------
    tt = leads(test)
    truth = tt["vorticity_truth"]
    seeds = tt[["vorticity"]].isel(member=[0, 1])
    clim = {"clim_mean": float(train["vorticity_truth"].mean()), "clim_std": float(train["vorticity_truth"].std())}
    ref = KolmogorovFlow(n=SETUP["n"], **SETUP["forecast"])  # lead 0 is the members' start: the reference rerun
    x0 = torch.from_numpy(test["vorticity"].isel(init_time=0, lead_time=0, member=slice(0, 4)).values)
    rerun = ref.integrate(x0, SETUP["n_leads"], round(SETUP["lead_interval"] / ref.dt))[:, 1:].transpose(0, 1).numpy()
    record["start_check_max_abs_diff"] = float(np.abs(rerun - tt["vorticity"].isel(init_time=0, member=slice(0, 4)).values).max())
    print(f"reference rerun from lead 0 (init 0, members 0-3): max |diff| {record['start_check_max_abs_diff']:.2e}")
    ens = {"physics (reference solver)": tt["vorticity"], "tuned solver": cached_tuned(args.cache, test, tuned_name(*spec["test"]))}
    for name, emu in {"teacher": teacher, **students}.items():
        ens[name] = emu.generate(seeds, m, seed=1, batch_size=4096, progress=False)["vorticity"]
    rows = {k: {kk: vv for kk, vv in ensemble_skill(e, truth, **clim).items() if kk != "rank_histogram"}
            for k, e in ens.items()}
    crps = {k: per_init_crps(e, truth) for k, e in ens.items()}
    for k in rows:
        rows[k]["crps_per_init"] = crps[k].tolist()
        rows[k]["crps_ratio_to_tuned"] = bootstrap_ratio(crps[k], crps["tuned solver"])
        rows[k]["crps_ratio_to_physics"] = bootstrap_ratio(crps[k], crps["physics (reference solver)"])

    # -- cost per member forecast, 1 thread, interleaved ---------------------------------------------
    cost = time_costs(test, {"teacher": teacher, **students}, args.repeats, m)
    print(f"\nKolmogorov flow 64 x 64, {args.n_test} test initial times x 4 leads; CRPS ratio with a 95% bootstrap "
          f"interval over initial times; cost per member forecast (4 leads), CPU, 1 thread, best of {args.repeats}")
    head = f"{'ensemble (31 members)':28s} {'calls':>5s} {'ms/member':>10s} {'tuned/this':>10s} {'CRPS':>8s} " \
           f"{'SSR':>6s} {'CRPS / tuned [95%]':>24s}"
    print(head + "\n" + "-" * len(head))
    calls_of = {"teacher": 2 * teacher.sampler["steps"] - 1, **{k: int(k.split()[1]) for k in students}}
    cost_key = {"physics (reference solver)": "reference solver", "tuned solver": "tuned solver"}
    table = {}
    for k, r in rows.items():
        ck = cost_key.get(k, k)
        ms = cost[ck] * 1e3
        q = r["crps_ratio_to_tuned"]
        table[k] = {"ms_per_member_forecast": ms, "tuned_over_this": cost["tuned solver"] / cost[ck],
                    "network_calls": calls_of.get(k), "crps": r["crps"], "ssr": r["ssr"], "crps_over_tuned": q}
        print(f"{k:28s} {str(calls_of.get(k, '-')):>5s} {ms:10.2f} {cost['tuned solver'] / cost[ck]:10.1f} "
              f"{r['crps']:8.4f} {r['ssr']:6.3f} {q['ratio']:8.3f} [{q['lo95']:.3f}, {q['hi95']:.3f}]")
    checks = {}
    for k in ["teacher", *students]:
        q = table[k]["crps_over_tuned"]
        checks[k] = {"at_least_10x_cheaper": table[k]["tuned_over_this"] >= 10,
                     "crps_within_5pct_point": abs(q["ratio"] - 1) <= 0.05,
                     "crps_interval_inside_pm5pct": q["lo95"] >= 0.95 and q["hi95"] <= 1.05,
                     "crps_within_2pct_point": abs(q["ratio"] - 1) <= 0.02}
    print("targets:", json.dumps(checks, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": {**meta, "wall_s": time.time() - t_start},
                               "setup": {**SETUP, "tuned": TUNED, "quick": args.quick, "repeats": args.repeats},
                               "validation": {k: record[k] for k in record if k not in ("data", "start_check_max_abs_diff")},
                               "data": record["data"], "start_check_max_abs_diff": record["start_check_max_abs_diff"],
                               "table": table, "scores": rows, "cost_s_per_member_forecast": cost, "targets": checks},
                              indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
