"""Kolmogorov flow 64 x 64: the domain-localised diffusion analysis against DAPPER's LETKF, same run.

Setting (issue 25, fourth row): ``KolmogorovFlow(n=64)`` with its defaults (Re = 100, drag 0.1,
forcing wavenumber 4, amplitude 1, ETDRK4 dt = 0.01) in float32 for the truth and for both
filters' forecasts (the same perfect model; float32 is 3.4x cheaper than float64 here). The
vorticity is observed at every 4th grid point in each direction (256 of 4096 points, 1/16) every
8 model steps (0.08 time units), with Gaussian noise of std ``OBS_STD`` = 0.35, a tenth of the
vorticity's climatological std (3.55, measured on a spun-up trajectory of this model; each run
records its truth's std). The truth is spun up 5,000 steps (50 time units) from a random field;
both filters start from the same ensemble, truth + 1.0 x ``KolmogorovFlow.perturb`` (smooth
unit-RMS random fields), N = ``N`` members, and see the same observations (drawn here).

sciffusion: ``local_analysis`` with ``periodic_domains_2d`` (square blocks, a halo ``radius``,
Gaspari-Cohn R-localisation by 2-D distance to the block, half-width ``radius / 2``; a setting may
add ``enkf_n``, the adaptive EnKF-N inflation, and ``rtps``/``rtpp``, applied by ``relax`` after each
analysis). Peer: DAPPER's ``LETKF(N, rot=True, infl, loc_rad)`` (a setting may add its ``xN``)
with ``nd_Id_localization((64, 64), (b, b), obs)`` (its local analyses batched over b x b points,
the observations tapered by their mean distance to the batch). Both run in one process, one after the other, one thread; CPU seconds per cycle
(forecast + analysis) are the cost to read, wall seconds are recorded too.

    OMP_NUM_THREADS=1 python benchmarks/assimilate_kolmogorov.py --validate --cycles 150 --burn 50 --seeds 0
    OMP_NUM_THREADS=1 python benchmarks/assimilate_kolmogorov.py --cycles 2100 --burn 100 --seeds 1 2 3
    OMP_NUM_THREADS=1 python benchmarks/assimilate_kolmogorov.py --cost --cycles 6 --seeds 1  # interleaved cost
    OMP_NUM_THREADS=1 python benchmarks/assimilate_kolmogorov.py --solve-check --seeds 0  # one analysis's solve

The test run writes one part per (seed, method) to ``runs/assimilate_kolmogorov/part_*.json``
(a rerun with the same cycles and settings skips a finished part: resumable) and then
``results/assimilate_kolmogorov.json`` with every part and the validation record. Scores after
``--burn`` cycles as in ``assimilate_lorenz96_large.py`` (its ``Scorer``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _run_meta import run_meta  # noqa: E402
from assimilate_lorenz96_large import Scorer, best  # noqa: E402

SIZE, EVERY, STEPS, N = 64, 4, 8, 24
OBS_STD, CLIM_STD = 0.35, 3.55
SPINUP, INIT_SCALE = 5000, 1.0
OBS_INDEX = np.array([y * SIZE + x for y in range(0, SIZE, EVERY) for x in range(0, SIZE, EVERY)])
RESULTS = Path(__file__).resolve().parent / "results"
VALIDATION = RESULTS / "assimilate_kolmogorov_validation.json"
# settings tried on the validation seed after the test run had started (not used to choose): added to the result
SUPPLEMENT = RESULTS / "assimilate_kolmogorov_validation_supplement.json"
COST = RESULTS / "assimilate_kolmogorov_cost.json"  # --cost: interleaved repeats at the chosen settings
# the library's defaults (block 1 of periodic_domains_2d, 16 steps, MMPS's 5 CG iterations, no inflation;
# radius has none) first, as a cost reference only: ~10x the CPU cost of the grid below, so run for DEFAULT_CYCLES
DEFAULTS, DEFAULT_CYCLES = {"block": 1, "radius": 2, "steps": 16, "cg_iters": 5, "inflation": 1.0}, 3
OURS_GRID = [{"block": b, "radius": r, "steps": s, "cg_iters": c, "inflation": i}
             for b, r, s, c, i in ((4, 2, 4, 1, 1.0), (4, 2, 8, 2, 1.0), (8, 2, 8, 2, 1.0), (4, 2, 4, 1, 1.05),
                                   (4, 4, 4, 1, 1.0))]
PEER_GRID = [{"infl": i, "loc_rad": r} for i in (1.0, 1.03, 1.1) for r in (2, 4, 8)]
PEER_BATCH = 4


def model():
    from sciffusion.systems.kolmogorov import KolmogorovFlow

    return KolmogorovFlow(n=SIZE, dtype=torch.float32)


def make_problem(cycles: int, seed: int) -> dict:
    """Truth ``(cycles + 1, 64, 64)``, observations ``(cycles, 256)``, initial ensemble ``(N, 64, 64)``."""
    m = model()
    g = torch.Generator().manual_seed(seed)
    x = m.step(m.initial_state(1, g), SPINUP)
    truth = [x[0]]
    for _ in range(cycles):
        x = m.step(x, STEPS)
        truth.append(x[0])
    truth = torch.stack(truth)
    flat = truth[1:].reshape(cycles, -1)[:, torch.as_tensor(OBS_INDEX)].to(torch.float64)
    obs = flat + OBS_STD * torch.randn(flat.shape, generator=g, dtype=torch.float64)
    ens = m.perturb(truth[0].expand(N, -1, -1), g, INIT_SCALE)
    return {"truth": truth.numpy(), "obs": obs.numpy(), "ens": ens.numpy(), "seed": seed,
            "truth_std": float(truth.std())}


def forecast(m, x: torch.Tensor) -> torch.Tensor:
    return m.step(x.to(torch.float32), STEPS)


def run_ours(data: dict, cfg: dict, burn: int, partial: Path | None = None, log_every: int = 100) -> dict:
    from sciffusion.assimilate import local_analysis, relax
    from sciffusion.assimilate.local import periodic_domains_2d

    truth, obs, m = data["truth"], data["obs"], model()
    cfg = dict(cfg)
    if cfg.get("space") == "ensemble" and "cg_iters" in cfg:  # the earlier rounds' settings: MMPS, the default then
        cfg.setdefault("guidance", "mmps")
    radius = cfg.pop("radius")
    relaxation = {k: cfg.pop(k) for k in ("rtps", "rtpp") if k in cfg}  # after the analysis (relax)
    domains = periodic_domains_2d((SIZE, SIZE), OBS_INDEX, radius=radius, block=cfg.pop("block"),
                                  obs_radius=cfg.pop("obs_radius", radius / 2))
    x = torch.as_tensor(data["ens"])
    g = torch.Generator().manual_seed(1000 + int(data["seed"]))
    scorer = Scorer(burn, partial)
    for t in range(obs.shape[0]):
        start, cpu = time.perf_counter(), time.process_time()
        xf = forecast(m, x)
        x = relax(xf, local_analysis(xf, torch.as_tensor(obs[t]), domains=domains, noise_std=OBS_STD,
                                     generator=g, **cfg), **relaxation)
        scorer.add(t, x.reshape(N, -1).numpy(), truth[t + 1].reshape(-1), time.perf_counter() - start,
                   time.process_time() - cpu)
        if not scorer.rows[-1]["finite"]:
            break
        if t % log_every == 0:
            print("sciffusion cycle", t, {k: round(v, 3) for k, v in scorer.rows[-1].items()}, flush=True)
    return {"rows": scorer.rows, **scorer.summary()}


def run_letkf(data: dict, cfg: dict, burn: int, partial: Path | None = None, log_every: int = 100) -> dict:
    import dapper as dpr
    import dapper.da_methods as da
    import dapper.mods as modelling
    import dapper.stats
    from dapper.tools.localization import nd_Id_localization

    truth, obs, ens, m = data["truth"], data["obs"], data["ens"], model()
    cfg = dict(cfg)
    batch = int(cfg.pop("batch", PEER_BATCH))  # its localisation batches: batch x batch points
    flat_truth = truth.reshape(truth.shape[0], -1).astype(np.float64)
    scorer = Scorer(burn, partial)
    clock = {"t": time.perf_counter(), "cpu": time.process_time()}
    assess = dapper.stats.Stats.assess

    def recording(self, k, ko=None, faus=None, E=None, w=None, mu=None, Cov=None):
        out = assess(self, k, ko, faus, E, w, mu, Cov)
        if ko is not None and faus is None and E is not None:  # an analysis: score it, outside the clock
            now, cpu = time.perf_counter(), time.process_time()
            scorer.add(ko, np.array(E), flat_truth[k], now - clock["t"], cpu - clock["cpu"])
            if ko % log_every == 0:
                print("LETKF cycle", ko, {k_: round(v, 3) for k_, v in scorer.rows[-1].items()}, flush=True)
            clock["t"], clock["cpu"] = time.perf_counter(), time.process_time()
        return out

    def dyn(x, t=None, dt=None):
        return forecast(m, torch.as_tensor(x).reshape(-1, SIZE, SIZE)).reshape(x.shape).numpy().astype(np.float64)

    dapper.stats.Stats.assess = recording
    try:
        obs_model = {"M": len(OBS_INDEX), "model": lambda x, t=None: x[..., OBS_INDEX],
                     "noise": modelling.GaussRV(C=OBS_STD**2, M=len(OBS_INDEX)),
                     "localizer": nd_Id_localization((SIZE, SIZE), (batch, batch), OBS_INDEX)}
        tseq = modelling.Chronology(STEPS * model().dt, dko=1, Ko=obs.shape[0] - 1, BurnIn=0)
        x0 = modelling.RV(M=SIZE * SIZE, func=lambda n: ens.reshape(N, -1)[:n].astype(np.float64))
        hmm = modelling.HiddenMarkovModel({"M": SIZE * SIZE, "model": dyn, "noise": 0}, obs_model, tseq, x0)
        xp = da.LETKF(N=N, rot=cfg.pop("rot", True), **cfg)
        dpr.set_seed(2000 + int(data["seed"]))  # its random rotations
        clock.update(t=time.perf_counter(), cpu=time.process_time())
        xp.assimilate(hmm, flat_truth, obs, liveplots=False)
    except Exception as exc:  # a diverged filter is a result, not a crash of the benchmark
        return {"rows": scorer.rows, **scorer.summary(), "error": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        dapper.stats.Stats.assess = assess
    return {"rows": scorer.rows, **scorer.summary()}


RUNNERS = {"sciffusion": run_ours, "LETKF": run_letkf}
SCORES = ("rmse", "spread", "spread_skill", "crps", "cpu_sec_per_cycle_median", "sec_per_cycle_median")


def brief(r: dict) -> dict:
    return {k: round(r[k], 4) for k in SCORES if k in r} | ({"error": r["error"]} if "error" in r else {})


def rmse_difference(a: list, b: list, burn: int, batches: int = 20) -> dict:
    """Mean per-cycle RMSE difference ``a - b`` after ``burn`` and a 95% interval from batch means
    (``batches`` contiguous batches of cycles, which absorbs the serial correlation)."""
    ra = {r["t"]: r["rmse"] for r in a if r["t"] >= burn}
    rb = {r["t"]: r["rmse"] for r in b if r["t"] >= burn}
    common = sorted(set(ra) & set(rb))
    d = np.array([ra[t] - rb[t] for t in common])
    means = np.array([c.mean() for c in np.array_split(d, batches)])
    half = 2.093 * means.std(ddof=1) / np.sqrt(batches)  # t(0.975, 19)
    return {"mean": float(d.mean()), "ci95": [float(d.mean() - half), float(d.mean() + half)], "cycles": len(d),
            "relative": float(d.mean() / np.mean([rb[t] for t in common]))}


def cost(args, repeats: int = 3) -> dict:
    """CPU and wall seconds per cycle (forecast + analysis) of each method at the chosen settings:
    ``repeats`` interleaved runs of ``--cycles`` cycles each on the same data; best of the medians."""
    chosen = json.loads(args.chosen.read_text())["chosen"]
    data = make_problem(args.cycles, args.seeds[0])
    out = {name: [] for name in chosen}
    for _ in range(repeats):
        for name, cfg in chosen.items():
            r = RUNNERS[name](data, cfg, 0, log_every=10**9)
            out[name].append({k: r[k] for k in ("cpu_sec_per_cycle_median", "sec_per_cycle_median")})
            print(name, cfg, brief(r), flush=True)
    best_of = {name: {k: min(r[k] for r in rs) for k in rs[0]} for name, rs in out.items()}
    return {"cycles": args.cycles, "seed": args.seeds[0], "repeats": out, "best": best_of, "chosen": chosen,
            "cpu_ratio_sciffusion_over_letkf": best_of["sciffusion"]["cpu_sec_per_cycle_median"]
            / best_of["LETKF"]["cpu_sec_per_cycle_median"]}


def solve_check(args, repeats: int = 3) -> dict:
    """One analysis (the first cycle of ``--seeds[0]``, blocks of 8, every domain seeing every
    observation) by the closed-form posterior and by MMPS, against the closed form at 256 steps:
    RMS differences of the members and of their mean, CPU seconds (best of ``repeats``)."""
    from sciffusion.assimilate import local_analysis
    from sciffusion.assimilate.local import periodic_domains_2d

    data = make_problem(1, args.seeds[0])
    x = forecast(model(), torch.as_tensor(data["ens"]))
    y = torch.as_tensor(data["obs"][0])
    domains = periodic_domains_2d((SIZE, SIZE), OBS_INDEX, radius=36, block=8, obs_radius=18.0)

    def run(**kw):
        best_cpu = float("inf")
        for _ in range(repeats):
            cpu = time.process_time()
            xa = local_analysis(x, y, domains=domains, noise_std=OBS_STD, space="ensemble", sigma_max=100.0,
                                generator=torch.Generator().manual_seed(0), **kw).reshape(N, -1)
            best_cpu = min(best_cpu, time.process_time() - cpu)
        return xa, best_cpu

    ref, _ = run(guidance="exact", steps=256)
    rms = lambda a: float(a.pow(2).mean().sqrt())  # noqa: E731
    rows = []
    for kw in ({"guidance": "exact", "steps": 32}, {"guidance": "exact", "steps": 64},
               {"guidance": "mmps", "steps": 32, "cg_iters": 5}, {"guidance": "mmps", "steps": 32, "cg_iters": 10}):
        xa, cpu = run(**kw)
        rows.append({"settings": kw, "cpu_sec": cpu, "rms_members": rms(xa - ref),
                     "rms_mean": rms(xa.mean(0) - ref.mean(0))})
        print(rows[-1], flush=True)
    return {"seed": args.seeds[0], "domains": {"block": 8, "radius": 36, "obs_radius": 18.0},
            "update_rms": rms(ref - x.reshape(N, -1).double()), "reference": {"guidance": "exact", "steps": 256},
            "rows": rows}


def validate(args) -> dict:
    """The tuning grids on the validation seed (``--ours-grid``/``--peer-grid``: other grids, as JSON lists)."""
    data = make_problem(args.cycles, args.seeds[0])
    short = {k: v[: DEFAULT_CYCLES + 1] if k == "truth" else v[:DEFAULT_CYCLES] if k == "obs" else v
             for k, v in data.items()}
    ours = [] if args.ours_grid else [{"settings": DEFAULTS, **RUNNERS["sciffusion"](short, DEFAULTS, 0, log_every=1),
                                       "note": f"cost reference: {DEFAULT_CYCLES} cycles, no burn-in"}]
    ours += [{"settings": c, **RUNNERS["sciffusion"](data, c, args.burn)}
             for c in (json.loads(args.ours_grid) if args.ours_grid else OURS_GRID)]
    peers = [{"settings": c, **RUNNERS["LETKF"](data, c, args.burn)}
             for c in (json.loads(args.peer_grid) if args.peer_grid else PEER_GRID)]
    for name, rows in (("sciffusion", ours), ("LETKF", peers)):
        for r in rows:
            print("validation", name, r["settings"], brief(r), flush=True)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "rows"} for r in rows]  # noqa: E731
    return {"cycles": args.cycles, "burn": args.burn, "seed": args.seeds[0], "truth_std": data["truth_std"],
            "ours": strip(ours), "peers": strip(peers),
            "chosen": {"sciffusion": best(ours[0 if args.ours_grid else 1:])["settings"] if ours else None,
                       "LETKF": best(peers)["settings"] if peers else None},  # a grid of '[]': the other side only
            "note": "chosen: lowest validation RMSE; sciffusion among ours[1:]; ours[0] (the library defaults, "
                    f"block 1) ran {DEFAULT_CYCLES} cycles as a cost reference"}


def choose(rows: list, criterion: str = "rmse") -> dict:
    """The chosen row: lowest RMSE; with ``criterion="ssr"``, lowest RMSE among the rows whose
    spread-skill is within the issue's 0.9-1.1 (``assimilate_lorenz96.py``'s rule), and with no such
    row the lowest RMSE (where that script falls back to the spread-skill closest to 1)."""
    calibrated = [r for r in rows if 0.9 <= r.get("spread_skill", np.nan) <= 1.1]
    return best(calibrated if criterion == "ssr" and calibrated else rows)


def merge(paths: list[Path], criterion: str = "rmse") -> dict:
    """One validation record from several ``--validate`` runs of the same seed, cycles and burn-in
    (grids split across processes): every row kept (a setting run twice: its first run), each
    method's choice made over all of them by :func:`choose` with ``criterion``."""
    parts = [json.loads(p.read_text()) for p in paths]
    keys = {(v["seed"], v["cycles"], v["burn"]) for v in parts}
    if len(keys) != 1:
        raise SystemExit(f"--merge needs validation runs of one seed, cycles and burn-in; got {sorted(keys)}")
    rows = {"ours": [], "peers": []}
    for v in parts:
        for side in rows:
            rows[side] += [r for r in v[side] if all(r["settings"] != q["settings"] for q in rows[side])]
    return {**{k: parts[0][k] for k in ("cycles", "burn", "seed", "truth_std")}, **rows,
            "chosen": {name: choose(rows[side], criterion)["settings"] if rows[side] else None
                       for name, side in (("sciffusion", "ours"), ("LETKF", "peers"))},
            "merged_from": [{"file": p.name, "meta": v.get("meta"), "wall_seconds": v.get("wall_seconds")}
                            for p, v in zip(paths, parts)],
            "select": criterion,
            "note": "chosen: lowest validation RMSE over the merged rows" + (
                ", among those with spread-skill in 0.9-1.1 where there are any" if criterion == "ssr" else "")}


def part_path(seed: int, name: str, tag: str = "") -> Path:
    return RESULTS.parent.parent / "runs" / "assimilate_kolmogorov" / f"part_seed{seed}_{name}{tag}.json"


def test(args, meta: dict) -> dict:
    validation = json.loads(args.chosen.read_text())
    chosen = validation["chosen"]
    runs = {name: [] for name in chosen}
    for seed in args.seeds:
        data = None
        for name, cfg in chosen.items():
            path = part_path(seed, name, args.tag)
            path.parent.mkdir(parents=True, exist_ok=True)
            old = json.loads(path.read_text()) if path.exists() else {}
            if old.get("settings") == cfg and old.get("cycles") == args.cycles and old.get("burn") == args.burn:
                print("kept", path.name, brief(old), flush=True)
                runs[name].append(old)
                continue
            data = data or make_problem(args.cycles, seed)
            start = time.time()
            r = RUNNERS[name](data, cfg, args.burn, partial=path.with_suffix(".partial"))
            r = {**run_meta(), "seed": seed, "settings": cfg, "cycles": args.cycles, "burn": args.burn,
                 "truth_std": data["truth_std"], "wall_seconds": time.time() - start, **r}
            path.write_text(json.dumps(r, default=float))
            print("test", seed, name, brief(r), flush=True)
            runs[name].append(r)
    return summarise(runs, chosen, validation, args)


def summarise(runs: dict, chosen: dict, validation: dict, args) -> dict:
    table = {}
    for name, rs in runs.items():
        table[name] = {k: float(np.mean([r[k] for r in rs])) for k in SCORES if all(k in r for r in rs)}
    by_seed = {r["seed"]: r for r in runs.get("LETKF", [])}  # a chosen record may hold one side only
    diffs = {r["seed"]: rmse_difference(r["rows"], by_seed[r["seed"]]["rows"], args.burn)
             for r in runs.get("sciffusion", []) if r["seed"] in by_seed}
    per_seed = [d["mean"] for d in diffs.values()]
    for rs in runs.values():  # is it stationary? the scores of the second half of the scored cycles
        for r in rs:
            late = Scorer((args.burn + args.cycles) // 2)
            late.rows = r["rows"]
            r["second_half"] = {k: v for k, v in late.summary().items() if k in ("rmse", "spread", "spread_skill",
                                                                                    "scored_cycles")}
    strip = [{k: v for k, v in r.items() if k != "rows"} | {"rows": [{k: row[k] for k in ("t", "rmse", "spread",
                                                                                       "cpu_sec", "sec")}
                                                                      for row in r["rows"]]}
             for rs in runs.values() for r in rs]
    return {"seeds": args.seeds, "cycles": args.cycles, "burn": args.burn, "chosen": chosen,
            "table_mean_over_seeds": table,
            "rmse_difference_sciffusion_minus_letkf": {"per_seed": diffs,
                                                       "mean_over_seeds": float(np.mean(per_seed)) if per_seed else None},
            "runs": strip, "validation": validation,
            # the first round's supplement and interleaved cost belong to its validation record only
            **({"validation_supplement": json.loads(SUPPLEMENT.read_text()) if SUPPLEMENT.exists() else None,
                "cost_interleaved": json.loads(COST.read_text()) if COST.exists() else None}
               if Path(args.chosen).resolve() == VALIDATION.resolve() else {}),
            "parts_wall_seconds": float(sum(r["wall_seconds"] for rs in runs.values() for r in rs))}


def markdown(out: dict) -> str:
    lines = ["| seed | method | settings | RMSE | spread | spread-skill | CRPS | CPU s / cycle (median) | "
             "wall s / cycle (median) |", "|---" * 9 + "|"]
    for r in out["runs"]:
        name = "sciffusion" if "block" in r["settings"] else "LETKF"
        lines.append(f"| {r['seed']} | {name} | {r['settings']} | {r['rmse']:.3f} | {r['spread']:.3f} | "
                     f"{r['spread_skill']:.3f} | {r['crps']:.3f} | {r['cpu_sec_per_cycle_median']:.3f} | "
                     f"{r['sec_per_cycle_median']:.3f} |")
    for name, t in out["table_mean_over_seeds"].items():
        lines.append(f"| mean | {name} | | " + " | ".join(f"{t[k]:.3f}" for k in SCORES) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--validate", action="store_true")
    mode.add_argument("--cost", action="store_true")
    mode.add_argument("--solve-check", action="store_true",
                      help="one analysis: the closed-form posterior and MMPS against the closed form at 256 steps")
    mode.add_argument("--merge", type=Path, nargs="+", default=None,
                      help="validation JSONs of one seed (grids run in parallel processes) -> one record (--out)")
    p.add_argument("--cycles", type=int, default=2100)
    p.add_argument("--burn", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--chosen", type=Path, default=VALIDATION, help="JSON with the settings chosen on validation")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--select", choices=("rmse", "ssr"), default="rmse",
                   help="--merge: lowest RMSE, or lowest RMSE among spread-skill 0.9-1.1 (ssr)")
    p.add_argument("--tag", default="", help="test: suffix of the part files (two chosen records side by side)")
    p.add_argument("--ours-grid", default=None, help="validation: sciffusion settings to try (JSON list), no defaults")
    p.add_argument("--peer-grid", default=None, help="validation: LETKF settings to try (JSON list)")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    start, meta = time.time(), run_meta()  # the load at the start of the run
    if args.merge:
        out, path = merge(args.merge, args.select), args.out or VALIDATION
    elif args.cost:
        args.cycles = min(args.cycles, 6)
        out, path = cost(args), args.out or COST
    elif args.solve_check:
        out, path = solve_check(args), args.out or RESULTS / "assimilate_kolmogorov_solve_check.json"
    elif args.validate:
        out, path = validate(args), args.out or VALIDATION
    else:
        out, path = test(args, meta), args.out or RESULTS / "assimilate_kolmogorov.json"
    import dapper

    setting = {"model": "KolmogorovFlow(n=64) defaults (Re 100, drag 0.1, k_f 4, A 1, dt 0.01), float32",
               "obs": f"every {EVERY}th point per axis ({len(OBS_INDEX)} obs), every {STEPS} steps, std {OBS_STD}",
               "clim_std": CLIM_STD, "spinup_steps": SPINUP, "members": N, "init": f"truth + {INIT_SCALE} perturb()",
               "letkf_batch": [PEER_BATCH, PEER_BATCH], "letkf_batch_note": "unless a LETKF setting gives its batch"}
    out = {"meta": meta, "dapper_version": dapper.__version__, "setting": setting,
           "wall_seconds": time.time() - start, **out}
    path.write_text(json.dumps(out, indent=1, default=float))
    if not (args.cost or args.validate or args.merge or args.solve_check):
        print(markdown(out))
    print("wrote", path)


if __name__ == "__main__":
    main()
