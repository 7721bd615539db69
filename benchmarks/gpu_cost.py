"""Cost table of issue 21 on one device (a GPU): a generated member against a tuned-solver member, per member per
forecast (all leads), all in one run. The rows of ``time_costs`` in benchmarks/cost_kolmogorov.py and
cost_shallow_water.py, through the same calls, at the CPU script's batch and at a large one (a GPU is busy only
at large batches); each the best of ``--repeats`` interleaved repeats after a warm-up, synchronised around each.

Kolmogorov 64 x 64 (SETUP there, 4 leads of 1): tuned (dt 1/19, float32) and reference (dt 0.01, float64) solvers,
``integrate`` of 31 and 31 x ``--large`` members; the teacher (EOFMLP 384 x 3 as in the CPU result, Heun 12 = 23
calls) and its 2-call student (``distill``, ``with_student``), ``generate`` of 31 members for 1 and ``--large``
initial times. Shallow water 128 x 256 (4 leads of 6 h): the solvers (``float32_system``, dt 600 s) on 4 (its
``--time-batch``) and 8 x ``--large`` members; the emulator ("width 256, depth 2") and its student, M = 8 members.

Networks: the CPU runs' architectures (their trained weights are lost; a call costs the same whatever its
weights), trained for ``--fit-steps`` (students ``--distill-steps``) on an ensemble simulated on the device,
temperature 1 (it scales the first noise only). Nothing is scored: CRPS is copied from the CPU result files (file
and key per row). "tuned/this": the tuned solver's cost at the row's batch class / the row's. Without
torch-harmonics (the GPU image), carry .venv/lib/python3*/site-packages/torch_harmonics (``import_without``);
dask and zarr must be installed there (benchmarks/gpu_issue21.sh carries their wheels).

    python benchmarks/gpu_cost.py --device cuda --out benchmarks/results/gpu_cost_h200.json   # ~3 min on an H200
    OMP_NUM_THREADS=1 python benchmarks/gpu_cost.py --smoke   # tiny sizes on CPU: checks the script only
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _run_meta import run_meta  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE_NET = {"rank": 8, "cond_rank": 8, "width": 32, "depth": 1}
CPU = {  # per system: the CPU result file, per row kind the keys of its CRPS and ms per member per forecast, what CRPS is
    "kolmogorov": ("benchmarks/results/cost_kolmogorov.json", {
        k: (f"table/{key}/crps", f"table/{key}/ms_per_member_forecast") for k, key in
        (("tuned", "tuned solver"), ("reference", "physics (reference solver)"), ("teacher", "teacher"),
         ("student", "student 2"))}, "CRPS vs the truth (test split)"),
    "shallow water": ("benchmarks/results/cost_shallow_water.json", {
        k: (f"scores_vs_held_out_member/{key}/crps_ratio/mean_over_variables", f"cost_ms_per_member_per_forecast/{cost}")
        for k, key, cost in (("tuned", "tuned solver-8 (dt=600 s float32)", "tuned solver (dt=600 s float32)"),
                             ("reference", "physics-8 (reference, dt=600 s float64)", "reference solver (dt=600 s float64)"),
                             ("teacher", "emulator (width 256, depth 2, Heun 12)-8", "emulator (width 256, depth 2, Heun 12)"),
                             ("student", "student (2 calls)-8", "student (2 calls)"))},
                      "CRPS / physics-8's CRPS, mean over h, u, v (truth: held-out member 8)")}


def import_without() -> dict:
    """Import sciffusion and the CPU benchmarks where torch-harmonics is not installed (the GPU image): its
    pure-Python modules (the spherical harmonic transforms and the shallow-water example) from a carried copy
    of the package. dask and zarr, which sciffusion imports, must be installed (gpu_issue21.sh carries them)."""
    harmonics = "installed"
    if importlib.util.find_spec("torch_harmonics") is None:
        found = sorted(ROOT.glob(".venv/lib/python3*/site-packages/torch_harmonics"))  # carried to the GPU machine
        harmonics = str(found[0]) if found and (found[0] / "sht.py").exists() else "absent"
        if harmonics != "absent":
            pkg, ex = types.ModuleType("torch_harmonics"), types.ModuleType("torch_harmonics.examples")
            pkg.__path__, ex.__path__, pkg.examples = [harmonics], [harmonics + "/examples"], ex
            sys.modules.update({"torch_harmonics": pkg, "torch_harmonics.examples": ex})
            import torch_harmonics.quadrature as quadrature
            import torch_harmonics.sht as sht
            from torch_harmonics.examples.shallow_water_equations import ShallowWaterSolver
            pkg.quadrature, ex.ShallowWaterSolver = quadrature, ShallowWaterSolver
            pkg.__dict__.update({n: getattr(sht, n) for n in ("RealSHT", "InverseRealSHT", "RealVectorSHT",
                                                              "InverseRealVectorSHT")})
    import cost_kolmogorov  # noqa: F401  (sciffusion.emulators, .systems)
    import cost_shallow_water  # noqa: F401  (sciffusion.distill)
    return {"torch_harmonics": harmonics}


class Run:
    """The JSON record (rewritten after every round and failure) and the interleaved best-of timings."""

    def __init__(self, args, device):
        self.args, self.device, self.t0, self.out = args, device, time.time(), Path(args.out)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        self.record = {"meta": {**run_meta(), "device": str(device), "device_name": name, "torch": torch.__version__,
                                "cuda": torch.version.cuda, "smoke": args.smoke},
                       "notes": "networks of the CPU runs' architectures trained for a few steps only (fit_steps, "
                                "distill_steps, trajectories) on a small ensemble simulated here: a call costs the same whatever "
                                "the weights. crps_cpu: copied from the CPU result file (file, key), a property of the trained "
                                "weights, not of the device; cpu_ms: that file's cost of the row; tuned_over_this: the yardstick "
                                "row's cost / the row's",
                       "settings": vars(args), "failed": {}}

    def save(self):
        self.record["meta"]["wall_s"] = time.time() - self.t0
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.record, indent=1, default=str) + "\n")

    def attempt(self, name, fn):
        """``fn()``, or None with the error under "failed"."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001  (a row that fails must not stop the others)
            self.record["failed"][name] = f"{type(exc).__name__}: {exc}"
            print(f"FAILED {name}: {type(exc).__name__}: {exc}", flush=True)
            self.save()
            return None

    def timed(self, fn) -> float:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    def time_rows(self, system: str, rows: dict, runs: dict):
        """``runs[name] = (fn, members)``: a warm-up, then ``--repeats`` interleaved rounds; prints the table."""
        self.record[system]["rows"] = rows
        live = dict(runs)
        for k in range(self.args.repeats + 1):  # round 0 is the warm-up
            for name, (fn, members) in list(live.items()):
                t = self.attempt(f"{system}: {name}" + (" (warm-up)" if k == 0 else ""), lambda fn=fn: self.timed(fn))
                if t is None:
                    live.pop(name)
                elif k:
                    r = rows[name]
                    r["ms_per_member_forecast"] = min(r.get("ms_per_member_forecast", math.inf), t / members * 1e3)
            for r in rows.values():
                tuned, ms = rows[r["yardstick"]].get("ms_per_member_forecast"), r.get("ms_per_member_forecast")
                r["tuned_over_this"] = tuned / ms if tuned and ms else None
            self.save()
            print(f"  {system}: round {k} of {self.args.repeats}" + (" (warm-up)" if k == 0 else ""), flush=True)
        print(f"\n{system} on {self.record['meta']['device_name']}: ms per member per forecast (all leads), best of "
              f"{self.args.repeats}; CRPS(CPU): {CPU[system][2]}, copied from {CPU[system][0]}")
        head = f"{'row':58s} {'ms/member':>10s} {'batch':>6s} {'calls':>5s} {'CRPS(CPU)':>9s} {'tuned/this':>10s} {'CPU ms':>8s}"
        print(head + "\n" + "-" * len(head))
        f = lambda v, w, fmt: ("-" if v is None else format(v, fmt)).rjust(w)  # noqa: E731
        for name, r in rows.items():
            print(f"{name:58s} {f(r.get('ms_per_member_forecast'), 10, '.4g')} {r['batch']:6d} {f(r['network_calls'], 5, 'd')} "
                  f"{f(r['crps_cpu']['value'], 9, '.4g')} {f(r.get('tuned_over_this'), 10, '.3g')} {f(r['cpu_ms'], 8, '.4g')}")
        print(flush=True)


def cpu_value(path: str, key: str):
    """The number at ``key`` ("a/b/c") in the CPU result file ``path`` (None where there is none)."""
    d = functools.reduce(lambda d, k: d.get(k, {}), key.split("/"), json.loads((ROOT / path).read_text()))
    return d if isinstance(d, (int, float)) else None


def student_of(run, system, teacher, train):
    """``teacher.with_student`` of a 2-call student distilled as cost_kolmogorov.py does (``LatentPairs``)."""
    from sciffusion.distill import distill
    from sciffusion.emulators.ensemble import LatentPairs, _lead_per_sample, latent_net
    from sciffusion.emulators.seeds_data import SeedPairs, ensemble_tensor

    a, c, dims = run.args, teacher.coder, ["init_time", "lead_time"]
    pairs = LatentPairs(SeedPairs(c, ensemble_tensor(train, c.variables, dims, c.grid_dims, "member"),
                                  torch.from_numpy(_lead_per_sample(train, c, dims)), seed=0), latent_net(teacher.denoiser))
    st = distill(teacher.denoiser, pairs, calls=2, steps=a.distill_steps, n_trajectories=a.trajectories, progress=False,
                 batch_size=min(256, a.trajectories), teacher_steps=4 if a.smoke else 64, device=run.device)
    return teacher.with_student(st)


def measure(run, system, labels, solvers, batches, train, fit_kw, members, batch_size):
    """Rows: each solver at ``batches`` (the CPU script's, the large one); the teacher (``EnsembleEmulator.fit``
    with ``fit_kw``) and its student generating ``members`` for 1 and ``--large`` initial times. Then times them."""
    from sciffusion.emulators import EnsembleEmulator

    a, (small, big), (path, keys, what) = run.args, batches, CPU[system]
    yard = {b: f"{labels['tuned']}, {b} members" for b in batches}
    rows, runs = {}, {}

    def add(kind, name, batch, fn, calls, yardstick, first):
        rows[name] = {"batch": batch, "network_calls": calls, "yardstick": yardstick,
                      "crps_cpu": {"value": cpu_value(path, keys[kind][0]), "what": what, "file": path,
                                   "key": keys[kind][0]},
                      "cpu_ms": cpu_value(path, keys[kind][1]) if first else None}
        runs[name] = (fn, batch)

    for kind, make in solvers.items():
        for b in batches:
            add(kind, f"{labels[kind]}, {b} members", b, make(b), None, yard[b], b == small)
            if a.device_rows and kind == "tuned":  # like for like with generate, whose members end in host memory
                add(kind, f"{labels[kind]}, {b} members, output copied to host", b, make(b, host=True), None, yard[b], False)
    teacher = run.attempt(f"{system}: fit the teacher", lambda: EnsembleEmulator.fit(
        train, mode="emulation", steps=a.fit_steps, pairs_per_sample=16, device=run.device, progress=False, **fit_kw))
    emus = {"teacher": teacher}
    if teacher is not None:
        emus["student"] = run.attempt(f"{system}: distil the student", lambda: student_of(run, system, teacher, train))
    seeds = train.isel(member=[0, 1])
    many = seeds.isel(init_time=np.arange(a.large) % seeds.sizes["init_time"]).assign_coords(init_time=np.arange(a.large))
    for kind, emu in emus.items():
        for rng in a.rngs:
            for n, s, b in ((1, seeds.isel(init_time=[0]), small), (a.large, many, big)):
                if emu is not None:
                    gen = (lambda e=emu, s=s, rng=rng: e.generate(s, members, batch_size=batch_size, device=run.device,
                                                                   progress=False, rng=rng))
                    add(kind, f"{labels[kind]}, {n} init x {members} members" + ("" if rng == "torch" else f", {rng}"),
                        n * members, gen, 2 * emu.sampler["steps"] - 1 if kind == "teacher" else 2, yard[b],
                        n == 1 and rng == "torch")
                    rows[list(rows)[-1]]["rng"] = rng
                    if a.device_rows and n == a.large:  # the same draws left on the device (generate_tensor)
                        dev = (lambda e=emu, s=s, rng=rng: e.generate_tensor(s, members, batch_size=batch_size,
                                                                            device=run.device, rng=rng))
                        add(kind, f"{labels[kind]}, {n} init x {members} members" + ("" if rng == "torch" else f", {rng}")
                            + ", left on the device", n * members, dev,
                            2 * emu.sampler["steps"] - 1 if kind == "teacher" else 2, yard[b], False)
                        rows[list(rows)[-1]]["rng"] = rng
    run.time_rows(system, rows, runs)
    if a.profile_generate and emus.get("student") is not None:
        for rng in a.rngs:
            run.attempt(f"{system}: profile ({rng})", lambda rng=rng: profile_generate(
                run, system, rng, lambda: emus["student"].generate(many, members, batch_size=batch_size, device=run.device,
                                                                   progress=False, rng=rng), a.large * members))


def profile_generate(run, system, rng, call, members):
    """Host and device time of one large-batch student ``generate`` by operator (torch.profiler), top 30 by
    self CPU time, to a text file next to the JSON; the wall time split by cProfile into the network, the EOF and
    seeds' decoding, the streams and the rest (cProfile's top 30 by own time in a second file). Recorded under
    ``record[system]["profile"][rng]``."""
    import cProfile
    import pstats

    from torch.profiler import ProfilerActivity, profile

    call()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        call()
        if run.device.type == "cuda":
            torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    path = run.out.with_name(f"{run.out.stem}_profile_{system.replace(' ', '_')}_{rng}.txt")
    path.write_text(table)
    cp = cProfile.Profile()
    t0 = time.perf_counter()
    cp.enable()
    call()
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    cp.disable()
    wall = time.perf_counter() - t0
    import io

    buf = io.StringIO()
    st = pstats.Stats(cp, stream=buf)
    st.sort_stats("tottime").print_stats(30)
    path.with_name(path.stem + "_cprofile.txt").write_text(buf.getvalue())

    def cum(suffix, name):
        return sum(v[3] for (f, _, fn), v in st.stats.items() if fn == name and f.endswith(suffix))
    parts = {"sample (network calls and noise)": cum("sciffusion/diffusion/sample.py", "sample"),
             "streams (seeding)": cum("sciffusion/diffusion/streams.py", "stream_generators"),
             "EOF decoding": cum("sciffusion/nets/eof.py", "decode"),
             "seeds' decoding": cum("sciffusion/emulators/seeds_data.py", "decode"),
             "encode condition": cum("sciffusion/nets/eof.py", "encode_cond")}
    parts["rest (xarray output, copies)"] = wall - sum(parts.values())
    rec = {"table": str(path.name), "profiled_call_s": wall,
           "parts_ms_per_member_forecast": {k: v / members * 1e3 for k, v in parts.items()}}
    run.record[system].setdefault("profile", {})[rng] = rec
    print(f"{system} student generate ({rng}), one profiled call of {members} members: {wall * 1e3:.1f} ms; "
          + ", ".join(f"{k} {v:.4f}" for k, v in rec["parts_ms_per_member_forecast"].items()) + " ms/member", flush=True)
    run.save()


def kolmogorov(run):
    import cost_kolmogorov as ck
    from sciffusion.systems import KolmogorovFlow, simulate

    a, dev, system, s = run.args, run.device, "kolmogorov", ck.SETUP
    n, m = (16 if a.smoke else s["n"]), s["members"]
    net = {"name": "EOFMLP", "kwargs": SMOKE_NET if a.smoke else {"width": 384, "depth": 3}}
    run.record[system] = {"setup": {**s, "n": n, "tuned": ck.TUNED, "net": net, "pairs_per_sample": 16, "training_data":
                                    "reference solver, 8 initial times 1 apart after spin-up 2, 6 members, seed 101"}}
    tuned = KolmogorovFlow(n=n, **s["forecast"], dt=ck.TUNED["dt"], dtype=torch.float32, device=dev)
    ref = KolmogorovFlow(n=n, **s["forecast"], device=dev)
    truth = KolmogorovFlow(n=n, **s["truth"], device=dev)  # the networks' training data: a small reference ensemble
    data = simulate(truth, forecast_system=ref, n_members=6, n_init=2 if a.smoke else 8,
                    n_leads=s["n_leads"], lead_interval=s["lead_interval"], init_interval=1.0, perturbation=s["perturbation"],
                    spinup=2.0, seed=101, progress=False).drop_vars("chunk_done", errors="ignore").load()
    x0 = torch.from_numpy(data["vorticity"].isel(lead_time=0).values).flatten(0, 1)  # the perturbed initial states
    x0 = x0[torch.arange(m * a.large) % len(x0)].to(dev)

    def integrate(mo):  # cost_kolmogorov.time_costs' run: all leads of a batch of members
        def run(x, host):
            y = mo.integrate(x, s["n_leads"], round(s["lead_interval"] / mo.dt))
            return y.cpu() if host else y
        return lambda b, host=False: (lambda x=x0[:b].to(mo.dtype): run(x, host))

    train = ck.leads(data)[["vorticity"]]
    labels = {"tuned": "tuned solver (dt 1/19, float32)", "reference": "reference solver (dt 0.01, float64)",
              "teacher": "teacher (EOFMLP 384x3, Heun 12)", "student": "student (2 calls)"}
    measure(run, system, labels, {"tuned": integrate(tuned), "reference": integrate(ref)}, (m, m * a.large), train,
            {"net": net}, m, 4096)


def shallow_water(run):
    import cost_shallow_water as cs
    from sciffusion.systems import ShallowWater, member_generator

    a, dev, system, m, nlat = run.args, run.device, "shallow water", cs.M, (16 if run.args.smoke else cs.NLAT)
    net = {"name": "EOFMLP", "kwargs": {**cs.CONFIGS["width 256, depth 2"], **(SMOKE_NET if a.smoke else {})}}
    run.record[system] = {"setup": {"grid": f"{nlat}x{2 * nlat}", "n_leads": cs.N_LEADS, "lead_interval_h": cs.LEAD_H,
                                    "members": m, "net": net, "pairs_per_sample": 16, "eof_samples": 512,
                                    "training_data": "one_run: seed 101, no spin-up, 8 initial times 6 h apart, 6 members"}}
    sw = ShallowWater(nlat, 2 * nlat, device=dev)
    data = cs.one_run(sw, 101, 0.0, 2 if a.smoke else 8, cs.LEAD_H, 6)  # the CPU script's simulate, inits 6 h apart
    seed, spinup, _, interval, _ = cs.SPLITS["test"][0]  # time_costs' states: the first test initial time, perturbed
    x = cs.initial_states(sw, seed, spinup, 1, interval)
    x0 = torch.cat([sw.perturb(x, member_generator(seed, 0, k), cs.PERTURBATION) for k in range(m)])
    x0, steps = x0[torch.arange(m * a.large) % m], round(cs.LEAD_H / sw.dt)

    def solver(model, dtype):  # cost_shallow_water.time_costs' run()
        def go(y, host):
            for _ in range(cs.N_LEADS):
                y = model.step(y, steps)
                f = model.fields(y)
                if host:  # every lead's emulated variables, as generate returns them
                    [f[v].cpu() for v in cs.VARIABLES]
            if not bool(torch.isfinite(y).all()):
                raise RuntimeError("the timed solver run went non-finite")
        return lambda b, host=False: (lambda y=x0[:b].to(dtype): go(y, host))

    train = data.isel(lead_time=slice(1, None))[cs.VARIABLES]
    labels = {"tuned": "tuned solver (dt 600 s, float32)", "reference": "reference solver (dt 600 s, float64)",
              "teacher": "emulator (EOFMLP 256x2, Heun 12)", "student": "student (2 calls)"}
    solvers = {"tuned": solver(cs.float32_system(sw), torch.complex64), "reference": solver(sw, x0.dtype)}
    measure(run, system, labels, solvers, (4, m * a.large), train,  # the default sampler, Heun 12, as there
            {"variables": cs.VARIABLES, "n_seeds": 2, "net": net, "seed": 0, "eof_samples": 512}, m, 1024)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--systems", nargs="+", default=["kolmogorov", "shallow-water"], choices=("kolmogorov", "shallow-water"))
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed repeats (the best is kept)")
    p.add_argument("--large", type=int, default=64, help="initial times of the large batch (31 or 8 members each)")
    p.add_argument("--fit-steps", type=int, default=20, help="training steps of the teachers (for their cost, not skill)")
    p.add_argument("--distill-steps", type=int, default=10, help="training steps of the students")
    p.add_argument("--trajectories", type=int, default=256, help="teacher trajectories the students learn from")
    p.add_argument("--rngs", nargs="+", default=["torch"], choices=("torch", "philox"),
                   help="the emulators' member streams: a row per kind (generate's rng=)")
    p.add_argument("--device-rows", action="store_true",
                   help="also: the tuned solver with its output copied to host memory (as generate's is), and the "
                        "emulators' large batch through generate_tensor (members left on the device)")
    p.add_argument("--profile-generate", action="store_true",
                   help="profile one large-batch student generate per --rngs kind (a table next to --out)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (16-point grids, small nets): checks the script only")
    p.add_argument("--out", help="the JSON (default results/gpu_cost.json; /tmp/gpu_cost_smoke.json with --smoke)")
    args = p.parse_args(argv)
    if args.smoke:
        print("SMOKE: not a result", flush=True)
        vars(args).update(large=2, repeats=min(args.repeats, 2), fit_steps=2, distill_steps=2, trajectories=16)
    args.out = args.out or ("/tmp/gpu_cost_smoke.json" if args.smoke else str(ROOT / "benchmarks/results/gpu_cost.json"))
    run = Run(args, torch.device(args.device))
    run.record["meta"]["imports"] = import_without()
    for name, fn in (("kolmogorov", kolmogorov), ("shallow-water", shallow_water)):
        if name in args.systems:
            run.attempt(name.replace("-", " "), lambda fn=fn: fn(run))
    run.save()
    print(f"wrote {run.out} in {run.record['meta']['wall_s']:.0f} s" + (" (SMOKE: not a result)" if args.smoke else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
