"""Validation of the reference systems in ``sciffusion.systems`` and their cost per member.

    python benchmarks/validate_systems.py            # full validation (a few minutes on 2 cores)
    python benchmarks/validate_systems.py --quick    # smaller runs, same checks

Checks (each row of the printed table says what was measured against what):

* Lorenz-96 (K=40, F=8): leading Lyapunov exponent (Benettin, published ~1.7 per time unit),
  climatological mean and std (published ~2.3 and ~3.6), agreement with an independent loop
  implementation of the same RK4 scheme (numpy; DAPPER is not installed here) and with scipy's
  DOP853 ``solve_ivp`` at rtol 1e-12 (RK4 truncation error, fourth order).
* Kolmogorov flow (64^2, Re=100, drag 0.1, k_f=4): observed order under time-step refinement,
  time-mean energy balance injection = viscous dissipation + drag in the statistically steady
  state, and the energy spectrum (resolution: E(k_max) / E(peak)).
* Darcy: discrete residual of the sparse solve (64^2, 128^2, both coefficient variants),
  order against a manufactured solution, and agreement of a log-normal GRF solve with finer
  nested grids (the same coefficient restricted to coarser grids).
* Shallow water (64 x 128, Galewsky): mass and total energy drift over 10 simulated days.
* Cost: members per second at default size on this machine (one torch thread; the machine is
  shared, so figures may vary by ~2x), defined per system in ``cost_definition``.
* Zarr: a Kolmogorov ensemble run in a subprocess is killed with SIGKILL after its first chunks,
  resumed, and compared bit for bit with an uninterrupted in-memory run.

Writes ``benchmarks/results/validate_systems.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import zarr
from scipy.integrate import solve_ivp

from sciffusion.physics import darcy_residual
from sciffusion.systems import (
    DarcyFlow,
    KolmogorovFlow,
    Lorenz96,
    darcy_coefficient,
    leading_lyapunov_exponent,
    simulate,
    solve_darcy,
)

ROWS: list[tuple[str, str, str, str, bool]] = []


def row(system, check, value, target, ok):
    ROWS.append((system, check, value, target, bool(ok)))


def best_time(fn, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# --------------------------------------------------------------------------------- Lorenz-96
def numpy_l96(x, f=8.0):
    k = len(x)
    return np.array([(x[(i + 1) % k] - x[i - 2]) * x[i - 1] - x[i] + f for i in range(k)])


def validate_lorenz96(quick):
    s = Lorenz96()
    x = s.step(s.initial_state(16, torch.Generator().manual_seed(0)), 400)
    n = 1000 if quick else 4000
    lam = leading_lyapunov_exponent(s, x, n)
    row("lorenz96", f"leading Lyapunov exponent (16 x {n * 0.05:g} time units)", f"{lam:.3f}", "~1.7", 1.5 < lam < 1.9)
    traj = s.integrate(x, n, 1)
    mean, std = float(traj.mean()), float(traj.std())
    row("lorenz96", "climatological mean", f"{mean:.3f}", "~2.3", abs(mean - 2.3) < 0.1)
    row("lorenz96", "climatological std", f"{std:.3f}", "~3.6", abs(std - 3.6) < 0.1)
    x0 = x[0].numpy()
    y = x0.copy()
    for _ in range(20):  # 5 days, independent loop RK4
        k1 = numpy_l96(y); k2 = numpy_l96(y + 0.025 * k1); k3 = numpy_l96(y + 0.025 * k2); k4 = numpy_l96(y + 0.05 * k3)
        y = y + 0.05 / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    d_rk4 = float(np.abs(s.step(x[:1], 20)[0].numpy() - y).max())
    row("lorenz96", "max |ours - numpy loop RK4| after 20 steps (5 days)", f"{d_rk4:.1e}", "< 1e-10", d_rk4 < 1e-10)
    ref = solve_ivp(lambda t, z: numpy_l96(z), (0, 0.5), x0, method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]
    d_ivp = float(np.abs(s.step(x[:1], 10)[0].numpy() - ref).max())
    d_ivp2 = float(np.abs(Lorenz96(dt=0.025).step(x[:1], 20)[0].numpy() - ref).max())
    order = math.log2(d_ivp / d_ivp2)
    row("lorenz96", "max |ours - solve_ivp DOP853| at t=0.5 (dt=0.05)", f"{d_ivp:.1e}", "RK4 truncation", d_ivp < 0.05)
    row("lorenz96", "observed order vs solve_ivp (dt 0.05 -> 0.025)", f"{order:.2f}", "4", 3.5 < order < 4.5)
    return {"lyapunov": lam, "mean": mean, "std": std, "max_diff_numpy_rk4": d_rk4, "max_diff_solve_ivp": d_ivp,
            "order_vs_solve_ivp": order, "independent_implementation": "numpy loop RK4 + scipy solve_ivp DOP853 (DAPPER not installed)"}


# ------------------------------------------------------------------------------- Kolmogorov
def validate_kolmogorov(quick):
    s = KolmogorovFlow()
    g = torch.Generator().manual_seed(0)
    w = s.step(s.initial_state(4, g), 3000 if quick else 5000)  # spin-up 30-50 time units
    ref_dt, t_end = 0.0025, 0.4
    ref = KolmogorovFlow(dt=ref_dt).step(w[:1], round(t_end / ref_dt))
    errs = {}
    for dt in (0.04, 0.02, 0.01):
        errs[dt] = float((KolmogorovFlow(dt=dt).step(w[:1], round(t_end / dt)) - ref).abs().max())
    dts = sorted(errs, reverse=True)
    orders = [math.log2(errs[a] / errs[b]) for a, b in itertools.pairwise(dts)]
    row("kolmogorov", "observed time order (dt 0.04 -> 0.02 -> 0.01)", ", ".join(f"{o:.2f}" for o in orders), "4 (ETDRK4)",
        all(3.5 < o < 4.6 for o in orders))
    n_out = 300 if quick else 1000
    budget = {k: [] for k in ("energy", "injection", "dissipation", "drag_loss")}
    spectra = []
    x = w
    for _ in range(n_out):
        x = s.step(x, 10)  # every 0.1 time units
        for k, v in s.energy_budget(x).items():
            budget[k].append(v)
        spectra.append(s.energy_spectrum(x)[1])
    b = {k: torch.stack(v).mean().item() for k, v in budget.items()}
    de = (torch.stack(budget["energy"])[-1] - torch.stack(budget["energy"])[0]).mean().item() / (n_out * 0.1)
    imbalance = (b["injection"] - b["dissipation"] - b["drag_loss"] - de) / b["injection"]
    row("kolmogorov", f"<I> vs <D> + <2 mu E> over {n_out * 0.1:g} time units (4 members)",
        f"{b['injection']:.4f} vs {b['dissipation'] + b['drag_loss']:.4f}", "equal (steady state)",
        abs(b["injection"] - b["dissipation"] - b["drag_loss"]) / b["injection"] < 0.05)
    row("kolmogorov", "relative budget residual incl. dE/dt", f"{imbalance:.1e}", "< 1e-3", abs(imbalance) < 1e-3)
    pair = torch.cat([w[:1], w[:1] + 1e-6 * s.random_field(1, torch.Generator().manual_seed(9))])
    d0 = float((pair[1] - pair[0]).norm())
    pair = s.step(pair, 2000)
    growth = float((pair[1] - pair[0]).norm()) / d0
    row("kolmogorov", "growth of a 1e-6 perturbation over 20 time units", f"{growth:.1e}", "> 100 (chaotic)", growth > 100)
    spec = np.mean(spectra, axis=0)
    kmax = s.n // 3
    ratio = spec[kmax] / spec.max()
    kk = np.arange(6, 16)
    slope = float(np.polyfit(np.log(kk), np.log(spec[6:16]), 1)[0])
    row("kolmogorov", f"E(k={kmax}) / E(peak) (resolution)", f"{ratio:.1e}", "< 1e-3", ratio < 1e-3)
    row("kolmogorov", "spectral slope on 6 <= k <= 15", f"{slope:.2f}", "steep (<= -3, enstrophy range)", slope <= -3)
    return {"time_errors": errs, "time_orders": orders, "budget_time_means": b, "perturbation_growth_20": growth, "dE_dt": de,
            "relative_budget_residual": imbalance, "spectrum": spec.tolist(), "spectral_slope_6_15": slope,
            "params": s.params()}


# ------------------------------------------------------------------------------------ Darcy
def manufactured(n):
    gx = np.linspace(0, 1, n)
    x, y = np.meshgrid(gx, gx)
    e, sx, cx, s2y, c2y = np.exp(x), np.sin(np.pi * x), np.cos(np.pi * x), np.sin(2 * np.pi * y), np.cos(2 * np.pi * y)
    u = sx * s2y * e
    ux, uxx = (np.pi * cx + sx) * s2y * e, (2 * np.pi * cx + (1 - np.pi**2) * sx) * s2y * e
    uy, uyy = 2 * np.pi * sx * c2y * e, -4 * np.pi**2 * u
    a = 2 + np.sin(2 * np.pi * x) * np.cos(np.pi * y)
    ax, ay = 2 * np.pi * np.cos(2 * np.pi * x) * np.cos(np.pi * y), -np.pi * np.sin(2 * np.pi * x) * np.sin(np.pi * y)
    return a, -(ax * ux + a * uxx + ay * uy + a * uyy), u


def validate_darcy(quick):
    out = {"residual": {}}
    for n in (64, 128):
        for kind in ("threshold", "lognormal"):
            a, u = DarcyFlow(n, kind=kind).sample(2 if quick else 8, seed=1)
            r = darcy_residual(torch.tensor(a), torch.tensor(u))
            rel = float(r.norm() / math.sqrt(a.shape[0] * (n - 2) ** 2))
            out["residual"][f"{kind}_{n}"] = rel
            row("darcy", f"relative residual ||r|| / ||f||, {kind} {n}^2", f"{rel:.1e}", "< 1e-8", rel < 1e-8)
    errs = []
    ns = (17, 33, 65, 129)
    for n in ns:
        a, f, u = manufactured(n)
        errs.append(float(np.abs(solve_darcy(a, f) - u).max()))
    orders = [math.log2(p / q) for p, q in itertools.pairwise(errs)]
    row("darcy", "order vs manufactured solution (n = 17..129)", ", ".join(f"{o:.2f}" for o in orders), "2",
        all(1.9 < o < 2.1 for o in orders))
    fine = 257 if quick else 513
    a = darcy_coefficient(fine, 1, kind="lognormal", seed=3)[0]
    sols = {}
    n = fine
    while n >= 33:
        step = (fine - 1) // (n - 1)
        sols[n] = solve_darcy(a[::step, ::step])
        n = (n - 1) // 2 + 1
    keys = sorted(sols)
    diffs = [float(np.abs(sols[c] - sols[f][:: (f - 1) // (c - 1), :: (f - 1) // (c - 1)]).max()) for c, f in itertools.pairwise(keys)]
    gorders = [math.log2(p / q) for p, q in itertools.pairwise(diffs)]
    row("darcy", f"log-normal GRF: order vs nested finer grids ({keys[0]}..{keys[-1]})", ", ".join(f"{o:.2f}" for o in gorders),
        "~2 (rough coefficient: 1-2)", all(o > 1.0 for o in gorders))
    out.update(manufactured_errors=dict(zip(map(str, ns), errs)), manufactured_orders=orders,
               grf_nested_differences=dict(zip(map(str, keys[:-1]), diffs)), grf_nested_orders=gorders)
    return out


# ---------------------------------------------------------------------------- shallow water
def validate_shallow_water(quick):
    try:
        from sciffusion.systems import ShallowWater

        sw = ShallowWater()
    except ImportError as exc:
        row("shallow-water", "skipped", str(exc)[:60], "", True)
        return {"skipped": str(exc)}
    x = sw.initial_state(1, torch.Generator().manual_seed(0))
    inv0 = sw.invariants(x)
    days = 2 if quick else 10
    x = sw.step(x, round(days * 86400 / sw.dt_seconds))
    inv = sw.invariants(x)
    dm = float((inv["mass"] - inv0["mass"]) / inv0["mass"])
    de = float((inv["energy"] - inv0["energy"]) / inv0["energy"])
    vort = float(sw.fields(x)["vorticity"].abs().max())
    row("shallow-water", f"relative mass drift over {days} days (64x128)", f"{dm:.1e}", "|.| < 1e-12", abs(dm) < 1e-12)
    row("shallow-water", f"relative total-energy drift over {days} days", f"{de:.1e}", "|.| < 1e-2 (hyperdiffusion)", abs(de) < 1e-2)
    return {"days": days, "mass_drift": dm, "energy_drift": de, "max_abs_vorticity": vort, "params": sw.params()}


# --------------------------------------------------------------------------------- cost
def measure_cost(quick):
    cost, defs = {}, {}
    s = Lorenz96()
    x = s.initial_state(100, torch.Generator().manual_seed(0))
    t = best_time(lambda: s.step(x, 40))
    cost["lorenz96"], defs["lorenz96"] = 100 / t, "one 40-step (10-day) forecast of K=40, batch 100"
    k = KolmogorovFlow()
    w = k.initial_state(8, torch.Generator().manual_seed(0))
    t = best_time(lambda: k.step(w, 100), 1 if quick else 2)
    cost["kolmogorov"], defs["kolmogorov"] = 8 / t, "one member advanced 1 time unit (100 ETDRK4 steps) at 64^2, batch 8"
    for n in (64, 128):
        d = DarcyFlow(n)
        t = best_time(lambda d=d: d.sample(8), 1 if quick else 2)
        cost[f"darcy_{n}"], defs[f"darcy_{n}"] = 8 / t, f"one (a, u) pair (GRF + sparse direct solve) at {n}^2"
    try:
        from sciffusion.systems import ShallowWater

        sw = ShallowWater()
        x = sw.initial_state(4, torch.Generator().manual_seed(0))
        t = best_time(lambda: sw.step(x, 144), 1)
        cost["shallow-water"], defs["shallow-water"] = 4 / t, "one member advanced 1 simulated day (144 RK4 steps of 600 s) at 64x128, batch 4"
    except ImportError:
        pass
    for name, v in cost.items():
        row("cost", f"{name}: {defs[name]}", f"{v:.3g} members/s", "", True)
    return cost, defs


# ------------------------------------------------------------------------ zarr + kill/resume
KILL_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from sciffusion.systems import KolmogorovFlow, simulate
simulate(KolmogorovFlow(n=32), n_members=4, n_init=8, n_leads=5, lead_interval=0.2, spinup=1.0, seed=3,
         out=sys.argv[1], on_chunk=lambda c: print(c, flush=True))
"""


def validate_zarr_resume():
    kw = {"n_members": 4, "n_init": 8, "n_leads": 5, "lead_interval": 0.2, "spinup": 1.0, "seed": 3}
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "kf.zarr")
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, store], stdout=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parents[1])
        before = []
        while len(before) < 3:
            line = proc.stdout.readline()
            if not line:
                break
            before.append(int(line))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        record = zarr.open_group(store, mode="r").attrs.get("sciffusion_completed_chunks", "[]")
        flagged = len(json.loads(record))  # chunks are written in order
        after = []
        resumed = simulate(KolmogorovFlow(n=32), out=store, mode="resume", on_chunk=after.append, **kw).load()
        full = simulate(KolmogorovFlow(n=32), **kw)
        identical = resumed.identical(full)
        reopened = xr.open_zarr(store, consolidated=False)
        attrs_ok = (reopened.vorticity.attrs.get("units") == "1" and reopened.lead_time.attrs.get("standard_name") == "forecast_period"
                    and reopened.attrs.get("Conventions") == "CF-1.8")
    ok = identical and not set(after) & set(range(flagged)) and len(after) == 8 - flagged
    row("zarr", "SIGKILL after chunks -> resume: chunks recomputed / finished before kill",
        f"{len(after)} / {flagged}", f"{8 - flagged} / {flagged}", ok)
    row("zarr", "resumed store == uninterrupted run (bit for bit), CF attrs intact", str(identical and attrs_ok), "True",
        identical and attrs_ok)
    return {"chunks_total": 8, "finished_before_kill": flagged, "recomputed_after_resume": after,
            "identical_to_uninterrupted": bool(identical), "attrs_intact": bool(attrs_ok)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller runs")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "validate_systems.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    results = {"lorenz96": validate_lorenz96(args.quick), "kolmogorov": validate_kolmogorov(args.quick),
               "darcy": validate_darcy(args.quick), "shallow_water": validate_shallow_water(args.quick),
               "zarr_resume": validate_zarr_resume()}
    cost, defs = measure_cost(args.quick)
    results.update(members_per_second=cost, cost_definition=defs, quick=args.quick, torch_threads=1,
                   machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
                   torch=torch.__version__, wall_seconds=time.time() - t0,
                   table=[dict(zip(("system", "check", "value", "target", "ok"), r)) for r in ROWS])
    w = [max(len(str(r[i])) for r in ROWS) for i in range(4)]
    print(f"{'system':<{w[0]}}  {'check':<{w[1]}}  {'value':<{w[2]}}  {'target':<{w[3]}}  ok")
    for r in ROWS:
        print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:<{w[3]}}  {'yes' if r[4] else 'NO'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=float))
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")
    return 0 if all(r[4] for r in ROWS) else 1


if __name__ == "__main__":
    sys.exit(main())
