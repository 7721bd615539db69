"""Lorenz-96 with 10,000 variables: the domain-localised diffusion analysis against DAPPER's LETKF.

Setting (issue 25, third row): Lorenz-96 (F = 8, RK4 dt = 0.05) with ``--nx`` variables
(10,000), observations arctan(x) of every second variable every 0.05 (one analysis per model
step) with R = I, N = 24 members for both filters. The truth is spun up on the attractor
(400 steps); both filters start from the same ensemble, truth + N(0, 1) perturbations, and see the
same observations (drawn here, fed to both). sciffusion: ``sciffusion.assimilate.local_analysis``
with ``periodic_domains`` (blocks of ``block`` points, halo ``radius``, Gaspari-Cohn
R-localisation of half-width ``radius / 2``), forecast ``Lorenz96.step``. Peer: DAPPER's
``LETKF(N=24, rot=True, infl, loc_rad)`` with its ``nd_Id_localization`` for the ring.

Each method runs in its own process (``--worker``) so its peak memory (``ru_maxrss``) is its own;
the two run concurrently (the machine is shared: per-cycle wall and CPU seconds are both
recorded; CPU seconds are the less noisy cost). Scores after ``--burn`` cycles: RMSE of the
analysis mean (DAPPER's rmse.a), spread (rmv.a), spread-skill (finite-ensemble corrected, pooled
over cycles and variables, as ``sciffusion.metrics.spread_skill_ratio``), CRPS (``crps_ensemble``).

    OMP_NUM_THREADS=1 python benchmarks/assimilate_lorenz96_large.py --validate --nx 500 --cycles 80 --burn 20 --seed 0
    OMP_NUM_THREADS=1 python benchmarks/assimilate_lorenz96_large.py --nx 10000 --cycles 100 --burn 20 --seed 1

``--validate`` runs the tuning grids (a smaller ring and another seed: the filters are local, so
their tuning does not depend on the ring's length) and writes ``--out`` (default
``results/assimilate_lorenz96_large_validation.json``); the test run reads the chosen settings
from ``--chosen`` and writes ``results/assimilate_lorenz96_large.json`` with the whole validation
record inside (``validation``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _run_meta import run_meta  # noqa: E402

N, OBS_STD = 24, 1.0
RESULTS = Path(__file__).resolve().parent / "results"
VALIDATION = RESULTS / "assimilate_lorenz96_large_validation.json"
# the library's defaults (block 1, 16 steps, MMPS's 5 CG iterations; radius has none) first, as a reference:
# not eligible for the 10,000-variable run, where block 1 costs ~15x more per cycle than blocks of 10
DEFAULTS = {"block": 1, "radius": 8, "steps": 16, "cg_iters": 5, "inflation": 1.0}
OURS_GRID = [DEFAULTS] + [{"block": b, "radius": r, "steps": s, "cg_iters": 3, "inflation": i}
                          for b, r, s, i in ((10, 8, 12, 1.0), (10, 8, 12, 1.05), (10, 4, 12, 1.0), (10, 12, 12, 1.0),
                                             (20, 8, 8, 1.0))]
PEER_GRID = [{"infl": i, "loc_rad": r} for i in (1.02, 1.05, 1.1) for r in (2, 4, 8)]


def make_problem(nx: int, cycles: int, seed: int, path: Path) -> None:
    """Truth ``(cycles + 1, nx)``, observations ``(cycles, nx / 2)``, initial ensemble ``(N, nx)`` to ``path``."""
    from sciffusion.systems.lorenz96 import Lorenz96

    model = Lorenz96(k=nx)
    g = torch.Generator().manual_seed(seed)
    x = model.step(model.initial_state(1, g) + torch.randn(1, nx, generator=g, dtype=torch.float64), 400)
    truth = [x[0]]
    for _ in range(cycles):
        x = model.step(x)
        truth.append(x[0])
    truth = torch.stack(truth)
    obs = torch.atan(truth[1:, ::2]) + OBS_STD * torch.randn(cycles, nx // 2, generator=g, dtype=torch.float64)
    ens = truth[0] + torch.randn(N, nx, generator=g, dtype=torch.float64)
    np.savez(path, truth=truth.numpy(), obs=obs.numpy(), ens=ens.numpy(), seed=seed)


class Scorer:
    """Per-cycle scores of analysis ensembles ``(N, d)`` against the truth; pooled spread-skill."""

    def __init__(self, burn: int, partial: Path | None = None):
        self.burn, self.rows, self.partial = burn, [], partial

    def add(self, t: int, ens: np.ndarray, truth: np.ndarray, seconds: float, cpu: float) -> None:
        from sciffusion.metrics import crps_ensemble

        mean, var = ens.mean(0), ens.var(0, ddof=1)
        m = ens.shape[0]
        row = {"t": t, "rmse": float(np.sqrt(((mean - truth) ** 2).mean())), "spread": float(np.sqrt(var.mean())),
               "spread2_corrected": float((var * (m + 1) / m).mean()), "mse": float(((mean - truth) ** 2).mean()),
               "crps": float(crps_ensemble(ens, truth, member_dim=0, reduce_dims="all")),
               "sec": seconds, "cpu_sec": cpu, "finite": bool(np.isfinite(ens).all())}
        self.rows.append(row)
        if self.partial is not None and len(self.rows) % 5 == 0:  # what a killed run leaves behind
            self.partial.write_text(json.dumps({"rows": self.rows, **self.summary()}, default=float))

    def summary(self) -> dict:
        rows = [r for r in self.rows if r["t"] >= self.burn]
        if not rows:
            return {}
        pick = lambda k: np.array([r[k] for r in rows])  # noqa: E731
        allr = lambda k: np.array([r[k] for r in self.rows])  # noqa: E731
        return {"rmse": float(pick("rmse").mean()), "spread": float(pick("spread").mean()),
                "spread_skill": float(np.sqrt(pick("spread2_corrected").mean() / pick("mse").mean())),
                "crps": float(pick("crps").mean()), "scored_cycles": len(rows),
                "sec_per_cycle_median": float(np.median(allr("sec"))), "sec_per_cycle_min": float(allr("sec").min()),
                "cpu_sec_per_cycle_median": float(np.median(allr("cpu_sec"))),
                "cpu_sec_per_cycle_min": float(allr("cpu_sec").min())}


def worker_ours(data, cfg: dict, burn: int, partial: Path | None = None) -> dict:
    from sciffusion.assimilate import local_analysis, periodic_domains
    from sciffusion.systems.lorenz96 import Lorenz96

    truth, obs = data["truth"], data["obs"]
    nx = truth.shape[1]
    model = Lorenz96(k=nx)
    cfg = dict(cfg)
    radius = cfg.pop("radius")
    domains = periodic_domains(nx, np.arange(0, nx, 2), radius=radius, block=cfg.pop("block"), obs_radius=radius / 2)
    x = torch.as_tensor(data["ens"])
    scorer = Scorer(burn, partial)
    for t in range(obs.shape[0]):
        start, cpu = time.perf_counter(), time.process_time()
        x = local_analysis(model.step(x), torch.as_tensor(obs[t]), domains=domains, function=torch.atan,
                           noise_std=OBS_STD, **cfg)
        scorer.add(t, x.numpy(), truth[t + 1], time.perf_counter() - start, time.process_time() - cpu)
        if not scorer.rows[-1]["finite"]:
            break
        if t % 10 == 0:
            print("cycle", t, {k: round(v, 3) for k, v in scorer.rows[-1].items()}, flush=True)
    return {"rows": scorer.rows, **scorer.summary()}


def worker_letkf(data, cfg: dict, burn: int, partial: Path | None = None) -> dict:
    import dapper as dpr
    import dapper.da_methods as da
    import dapper.mods as modelling
    import dapper.stats
    from dapper.mods.Lorenz96 import step
    from dapper.tools.localization import nd_Id_localization

    truth, obs, ens = data["truth"], data["obs"], data["ens"]
    nx = truth.shape[1]
    jj = np.arange(0, nx, 2)
    scorer = Scorer(burn, partial)
    clock = {"t": time.perf_counter(), "cpu": time.process_time()}
    assess = dapper.stats.Stats.assess

    def recording(self, k, ko=None, faus=None, E=None, w=None, mu=None, Cov=None):  # score each analysis
        if ko is not None and faus is None and E is not None:
            now, cpu = time.perf_counter(), time.process_time()
            scorer.add(ko, np.array(E), truth[k], now - clock["t"], cpu - clock["cpu"])
            out = assess(self, k, ko, faus, E, w, mu, Cov)
            clock["t"], clock["cpu"] = time.perf_counter(), time.process_time()  # scoring is not the filter's cost
            return out
        return assess(self, k, ko, faus, E, w, mu, Cov)

    dapper.stats.Stats.assess = recording
    dyn = {"M": nx, "model": step, "noise": 0}
    obs_model = {"M": len(jj), "model": lambda x, t=None: np.arctan(x[..., jj]),
                 "noise": modelling.GaussRV(C=OBS_STD**2, M=len(jj)), "localizer": nd_Id_localization((nx,), (2,), jj)}
    tseq = modelling.Chronology(0.05, dko=1, Ko=obs.shape[0] - 1, BurnIn=0)
    x0 = modelling.RV(M=nx, func=lambda n: ens[:n].copy())
    hmm = modelling.HiddenMarkovModel(dyn, obs_model, tseq, x0)
    xp = da.LETKF(N=N, rot=True, **cfg)
    dpr.set_seed(2000 + int(data["seed"]))  # its random rotations
    try:
        xp.assimilate(hmm, truth, obs, liveplots=False)
    except Exception as exc:  # a diverged filter is a result, not a crash of the benchmark
        return {"rows": scorer.rows, **scorer.summary(), "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"rows": scorer.rows, **scorer.summary()}


def worker(args) -> None:
    torch.set_num_threads(1)
    data = dict(np.load(args.data))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.worker == "letkf":
        import dapper  # noqa: F401  (imports count in the baseline, not the run)
    else:
        import sciffusion.assimilate  # noqa: F401
    base_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cfg = json.loads(args.config)
    start = time.time()
    out = (worker_letkf if args.worker == "letkf" else worker_ours)(data, cfg, args.burn,
                                                                    Path(str(args.out) + ".partial"))
    out.update(method=args.worker, settings=cfg, wall_seconds=time.time() - start,
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               rss_mb_after_data_and_imports=base_imports, rss_mb_after_data=base)
    Path(args.out).write_text(json.dumps(out, default=float))


def launch(method: str, cfg: dict, data: Path, burn: int, tmp: Path, tag: str):
    out = tmp / f"{tag}.json"
    cmd = [sys.executable, __file__, "--worker", method, "--config", json.dumps(cfg), "--data", str(data),
           "--burn", str(burn), "--out", str(out)]
    log = open(tmp / f"{tag}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), out


def run_all(jobs, data, burn, tmp, parallel=2):
    """Run ``[(tag, method, cfg)]`` with at most ``parallel`` worker processes at a time."""
    results, running, queue = {}, [], list(jobs)
    while queue or running:
        while queue and len(running) < parallel:
            tag, method, cfg = queue.pop(0)
            running.append((tag, *launch(method, cfg, data, burn, tmp, tag)))
        time.sleep(2)
        for item in list(running):
            tag, proc, out = item
            if proc.poll() is not None:
                running.remove(item)
                results[tag] = (json.loads(out.read_text()) if out.exists()
                                else {"error": (tmp / f"{tag}.log").read_text()[-500:]})
                r = results[tag]
                print(tag, {k: round(r[k], 4) for k in ("rmse", "spread", "spread_skill", "crps",
                                                        "cpu_sec_per_cycle_median", "peak_rss_mb") if k in r},
                      r.get("error", ""), flush=True)
    return results


def collect(args) -> None:
    """``--collect DIR``: the ``*.json.partial`` files a killed test run left in its work folder ``DIR``
    (written every 5 cycles), scored over the cycles both methods finished, added to ``--out`` as
    ``partial_run`` (peak memory is only measured by a finished worker: see the finished run)."""
    folder = Path(args.collect)
    rows = {name: json.loads((folder / f"{name}.json.partial").read_text())["rows"] for name in ("sciffusion", "LETKF")}
    common = min(len(r) for r in rows.values())
    out = {"cycles_done": common, "burn": args.burn, "seed": args.seed, "nx": args.nx, "runs": {}}
    for name, r in rows.items():
        scorer = Scorer(args.burn)
        scorer.rows = r[:common]
        out["runs"][name] = scorer.summary()
        last = Scorer(common // 2)
        last.rows = r[:common]
        out["runs"][name]["second_half"] = last.summary()
    path = args.out or RESULTS / "assimilate_lorenz96_large.json"
    result = json.loads(path.read_text())
    result["partial_run"] = {**run_meta(), **out}
    path.write_text(json.dumps(result, indent=1, default=float))
    for name, r in out["runs"].items():
        print(name, common, "cycles:", {k: round(v, 3) for k, v in r.items() if isinstance(v, float)},
              "second half:", {k: round(r["second_half"][k], 3) for k in ("rmse", "spread", "spread_skill")})


def best(rows):
    return min(rows, key=lambda r: np.nan_to_num(r.get("rmse", np.nan), nan=np.inf))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--validate", action="store_true")
    p.add_argument("--nx", type=int, default=10000)
    p.add_argument("--cycles", type=int, default=100)
    p.add_argument("--burn", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--chosen", type=Path, default=VALIDATION)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--worker", default=None)
    p.add_argument("--config", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--collect", default=None, help="work folder of a killed test run (see collect())")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.collect:
        return collect(args)
    start = time.time()
    meta = run_meta()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "problem.npz"
        make_problem(args.nx, args.cycles, args.seed, data)
        if args.validate:
            jobs = [(f"letkf{i}", "letkf", c) for i, c in enumerate(PEER_GRID)]
            jobs += [(f"ours{i}", "ours", c) for i, c in enumerate(OURS_GRID)]
            res = run_all(jobs, data, args.burn, tmp, args.parallel)
            ours = [{**res[f"ours{i}"], "settings": c} for i, c in enumerate(OURS_GRID)]
            peers = [{**res[f"letkf{i}"], "settings": c} for i, c in enumerate(PEER_GRID)]
            out = {"nx": args.nx, "cycles": args.cycles, "burn": args.burn, "seed": args.seed,
                   "ours": ours, "peers": peers,
                   "chosen": {"sciffusion": best(ours[1:])["settings"], "LETKF": best(peers)["settings"]},
                   "note": "sciffusion chosen among ours[1:]; ours[0] (the defaults) is a reference"}
        else:
            validation = json.loads(args.chosen.read_text())
            chosen = validation["chosen"]
            jobs = [("sciffusion", "ours", chosen["sciffusion"]), ("LETKF", "letkf", chosen["LETKF"])]
            res = run_all(jobs, data, args.burn, tmp, args.parallel)
            out = {"nx": args.nx, "cycles": args.cycles, "burn": args.burn, "seed": args.seed, "members": N,
                   "obs_std": OBS_STD, "chosen": chosen, "chosen_from": str(args.chosen), "validation": validation,
                   "runs": res}
            cpu = {k: r.get("cpu_sec_per_cycle_median", np.nan) for k, r in res.items()}
            out["cpu_cost_ratio_letkf_over_sciffusion"] = cpu["LETKF"] / cpu["sciffusion"]
    for r in (out.get("ours", []) + out.get("peers", []) + list(out.get("runs", {}).values())):
        r.pop("rows", None) if args.validate else None
    out = {**meta, "wall_seconds": time.time() - start, **out}
    path = args.out or (VALIDATION if args.validate else RESULTS / "assimilate_lorenz96_large.json")
    path.write_text(json.dumps(out, indent=1, default=float))
    if not args.validate:
        print("| method | settings | RMSE | spread | spread-skill | CRPS | CPU s / cycle (median) | wall s / cycle "
              "(median, min) | peak RSS MB |")
        print("|---" * 9 + "|")
        for name, r in out["runs"].items():
            print(f"| {name} | {r.get('settings')} | {r.get('rmse', np.nan):.3f} | {r.get('spread', np.nan):.3f} | "
                  f"{r.get('spread_skill', np.nan):.3f} | {r.get('crps', np.nan):.3f} | "
                  f"{r.get('cpu_sec_per_cycle_median', np.nan):.2f} | {r.get('sec_per_cycle_median', np.nan):.2f}, "
                  f"{r.get('sec_per_cycle_min', np.nan):.2f} | {r.get('peak_rss_mb', np.nan):.0f} |")
    print("wrote", path)


if __name__ == "__main__":
    main()
