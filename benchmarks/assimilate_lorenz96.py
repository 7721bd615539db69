"""Cycled Lorenz-96 assimilation: sciffusion.assimilate against DAPPER's filters, same truth and observations.

Setting: DAPPER's ``Lorenz96.sakov2008`` (40 variables, RK4 dt = 0.05, an analysis every step).
Two observation models:

* ``linear``: every variable, R = I. Peers: EnKF('Sqrt', N=24, infl=1.02, rot=True) (published
  0.18), 3D-Var (xB=0.02, ~0.4).
* ``arctan``: arctan(x) of every second variable, noise std 0.05 (our choice). Peers: EnKF('Sqrt')
  and LETKF, tuned on the validation seed over inflation and localisation radius.
* ``arctan_r1``: the same with R = I, the issue's literal setting ("same" as sakov2008): the
  bounded arctan observations then carry little more than the sign of each observed variable.

sciffusion's filter: ``sciffusion.assimilate.cycle`` with ``Lorenz96.step`` as the forecast and the
training-free ensemble prior (N = 24), its settings chosen on the validation seed.

Scores per method after burn-in: analysis RMSE of the ensemble mean (DAPPER's rmse.a: per-cycle
RMSE over variables, averaged over cycles), spread (rmv.a), spread-skill ratio
(``sciffusion.metrics.spread_skill_ratio``, finite-ensemble corrected, pooled over cycles and
variables), CRPS (``crps_ensemble``; ``crps_gaussian`` for 3D-Var), wall seconds per cycle
(forecast + analysis, one CPU thread).

    OMP_NUM_THREADS=1 python benchmarks/assimilate_lorenz96.py --validate --cycles 300 --burn 100 --seeds 0
    OMP_NUM_THREADS=1 python benchmarks/assimilate_lorenz96.py --cycles 2200 --burn 200 --seeds 1 2 3

A setting ``"members"`` (sciffusion) or ``"N"`` (DAPPER) in ``--ours-grid`` / ``--peer-grid`` replaces the
24 members (the large-ensemble diagnostic of docs/assimilation.md).

``--validate`` runs the tuning grids and writes ``results/assimilate_lorenz96_validation.json``
with the chosen settings; the full run reads them and writes ``results/assimilate_lorenz96.json``.
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

import dapper as dpr  # noqa: E402  (benchmark-only dependency)
import dapper.da_methods as da  # noqa: E402
import dapper.mods as modelling  # noqa: E402
import dapper.stats  # noqa: E402
from dapper.mods.Lorenz96 import sakov2008  # noqa: E402
from dapper.tools.localization import nd_Id_localization  # noqa: E402

from sciffusion.assimilate import cycle, ring_taper  # noqa: E402
from sciffusion.inverse import Mask  # noqa: E402
from sciffusion.metrics import crps_ensemble, crps_gaussian, spread_skill_ratio  # noqa: E402
from sciffusion.systems.lorenz96 import Lorenz96  # noqa: E402

NX, N = 40, 24
ARCTAN_STD = {"arctan": 0.05, "arctan_r1": 1.0}
JJ = np.arange(0, NX, 2)
RESULTS = Path(__file__).resolve().parent / "results"
VALIDATION = RESULTS / "assimilate_lorenz96_validation.json"


def hmm(kind: str, cycles: int):
    """sakov2008 with ``cycles`` analyses (dko = 1), observations ``kind``."""
    obs = sakov2008.Obs if kind == "linear" else {
        "M": len(JJ), "model": lambda x, t=None: np.arctan(x[..., JJ]), "noise": modelling.GaussRV(C=ARCTAN_STD[kind]**2, M=len(JJ)),
        "localizer": nd_Id_localization((NX,), (2,), JJ)}
    tseq = modelling.Chronology(0.05, dko=1, Ko=cycles - 1, BurnIn=0)
    return modelling.HiddenMarkovModel(sakov2008.Dyn, obs, tseq, sakov2008.X0)


# ------------------------------------------------------------------ scores
def scores(mean, spread2, truth, ens=None, burn=0):
    """Scores after ``burn`` cycles from analysis means ``(T, d)``, variances ``(T, d)`` and (if any)
    ensembles ``(T, N, d)``."""
    m, v, x = mean[burn:], spread2[burn:], truth[burn:]
    rmse = float(np.sqrt(((m - x) ** 2).mean(1)).mean())
    rmv = float(np.sqrt(v.mean(1)).mean())
    if ens is None:
        crps = float(crps_gaussian(m, np.sqrt(v), x, reduce_dims="all"))
        ssr = float(np.sqrt(v.mean()) / np.sqrt(((m - x) ** 2).mean()))
    else:
        crps = float(crps_ensemble(ens[burn:], x, member_dim=1, reduce_dims="all"))
        ssr = float(spread_skill_ratio(ens[burn:], x, member_dim=1, reduce_dims="all"))
    return {"rmse": rmse, "spread": rmv, "spread_skill": ssr, "crps": crps}


# ------------------------------------------------------------------ DAPPER
_RECORD: list = []
_assess = dapper.stats.Stats.assess


def _recording_assess(self, k, ko=None, faus=None, E=None, w=None, mu=None, Cov=None):
    """Keep every analysis (ensemble, or mean and covariance diagonal) that DAPPER assesses."""
    if ko is not None and faus is None:
        _RECORD.append(np.array(E) if E is not None else (np.array(mu), np.diag(np.asarray(getattr(Cov, "full", Cov)))))
    return _assess(self, k, ko, faus, E, w, mu, Cov)


dapper.stats.Stats.assess = _recording_assess


def run_dapper(xp, model, xx, yy, truth, burn, seed):
    _RECORD.clear()
    dpr.set_seed(seed)
    start = time.perf_counter()
    try:
        xp.assimilate(model, xx, yy, liveplots=False)
    except Exception as exc:  # a diverged filter is a result (NaN), not a crash of the benchmark
        return {"rmse": float("nan"), "error": f"{type(exc).__name__}: {exc}"[:200]}
    sec = (time.perf_counter() - start) / len(truth)
    if isinstance(_RECORD[0], tuple):
        mean, var = (np.stack(v) for v in zip(*_RECORD))
        return {**scores(mean, var, truth, burn=burn), "sec_per_cycle": sec}
    ens = np.stack(_RECORD)
    return {**scores(ens.mean(1), ens.var(1, ddof=1), truth, ens, burn), "sec_per_cycle": sec}


def dapper_method(name, **kw):
    if name == "EnKF-Sqrt":  # a setting "N" overrides the benchmark's 24 members (the large-ensemble checks)
        return da.EnKF("Sqrt", rot=True, **{"N": N, **kw})
    if name == "LETKF":
        return da.LETKF(rot=True, **{"N": N, **kw})
    return da.Var3D(**kw)


# ------------------------------------------------------------------ sciffusion
def run_ours(kind, yy, truth, burn, seed, *, loc_radius=None, loc_metric="arc", members=N, **options):
    model = Lorenz96(k=NX)
    x0 = torch.as_tensor(np.random.default_rng(seed).normal(sakov2008.X0.mu, np.sqrt(0.001), (members, NX)))
    if kind == "linear":
        op, std = Mask(torch.ones(NX, dtype=torch.bool)), 1.0
    else:
        jj = torch.as_tensor(JJ)
        op, std = (lambda x: torch.atan(x[:, jj])), ARCTAN_STD[kind]
    if loc_radius is not None:  # loc_metric "chord": the taper of the chordal distance, valid at every radius
        options["localization"] = ring_taper(NX, loc_radius, metric=loc_metric)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    try:
        res = cycle(lambda x: model.step(x), x0, op, torch.as_tensor(np.stack(list(yy))), noise_std=std,
                    generator=g, **options)
    except Exception as exc:
        return {"rmse": float("nan"), "error": f"{type(exc).__name__}: {exc}"[:200]}
    sec = (time.perf_counter() - start) / len(truth)
    ens = res.analysis.numpy()
    return {**scores(ens.mean(1), ens.var(1, ddof=1), truth, ens, burn), "sec_per_cycle": sec,
            "analysis_sec_per_cycle": float(res.seconds.mean())}


def problem(kind, cycles, seed):
    model = hmm(kind, cycles)
    dpr.set_seed(100 + seed)  # DAPPER refuses seed 0
    xx, yy = model.simulate()
    return model, xx, yy, xx[model.tseq.kko]


# ------------------------------------------------------------------ protocols
OURS_GRID = {
    "linear": [{"steps": s, "cg_iters": 3, "inflation": i} for s, i in ((12, 1.0), (12, 1.02), (12, 1.04), (16, 1.02),
                                                                         (16, 1.04))],
    "arctan": [{"steps": 12, "cg_iters": 3, "inflation": i, "loc_radius": r} for i in (1.0, 1.05, 1.1)
               for r in (None, 8.0)],
}
OURS_GRID["arctan_r1"] = OURS_GRID["arctan"]
PEER_GRID = {
    "linear": [("EnKF-Sqrt", {"infl": 1.02}), ("3D-Var", {"xB": 0.02})],
    "arctan": [("EnKF-Sqrt", {"infl": i}) for i in (1.0, 1.02, 1.05, 1.1, 1.2)]
    + [("LETKF", {"infl": i, "loc_rad": r}) for i in (1.02, 1.05, 1.1, 1.2) for r in (2, 4, 8)],
}
PEER_GRID["arctan_r1"] = PEER_GRID["arctan"]


def select(runs, criterion: str):
    """The chosen (settings, scores): lowest RMSE; with ``criterion="ssr"``, lowest RMSE among the
    settings whose spread-skill is within 0.9-1.1, else the spread-skill closest to 1 (|log SSR|)."""
    def rmse(r):
        return np.nan_to_num(r[1]["rmse"], nan=np.inf)

    if criterion == "rmse":
        return min(runs, key=rmse)
    calibrated = [r for r in runs if 0.9 <= r[1].get("spread_skill", np.nan) <= 1.1]
    if calibrated:
        return min(calibrated, key=rmse)
    return min(runs, key=lambda r: abs(np.log(np.nan_to_num(r[1].get("spread_skill", np.nan), nan=1e-9))))


def validate(args):
    out = {"cycles": args.cycles, "burn": args.burn, "seed": args.seeds[0], "ours": {}, "peers": {}, "chosen": {},
           "select": args.select}
    for kind in args.kinds:
        model, xx, yy, truth = problem(kind, args.cycles, args.seeds[0])
        grid = OURS_GRID[kind]
        if args.inflations and kind == "linear":
            grid = [{"steps": 12, "cg_iters": 3, "inflation": i} for i in args.inflations]
        if args.ours_grid is not None:
            grid = json.loads(args.ours_grid)
        peer_grid = [tuple(p) for p in json.loads(args.peer_grid)] if args.peer_grid is not None else PEER_GRID[kind]
        ours = []
        for cfg in grid:
            ours.append((cfg, run_ours(kind, yy, truth, args.burn, args.seeds[0], **cfg)))
            _show(kind, "sciffusion", cfg, ours[-1][1])
        best = select(ours, args.select) if ours else None  # an empty grid runs the peers only
        if args.bandwidths and kind.startswith("arctan") and ours:  # the kernel prior at the best Gaussian setting
            for h in args.bandwidths:
                cfg = {**best[0], "bandwidth": h}
                ours.append((cfg, run_ours(kind, yy, truth, args.burn, args.seeds[0], **cfg)))
                _show(kind, "sciffusion", cfg, ours[-1][1])
            best = select(ours, args.select)
        peers = []
        for name, kw in peer_grid:
            peers.append((name, kw, run_dapper(dapper_method(name, **kw), model, xx, yy, truth, args.burn,
                                               args.seeds[0] + 2000)))
            _show(kind, name, kw, peers[-1][2])
        out["ours"][kind] = [{"settings": c, **r} for c, r in ours]
        out["peers"][kind] = [{"method": n, "settings": kw, **r} for n, kw, r in peers]
        chosen = {"sciffusion": best[0]} if ours else {}
        for name in {n for n, _ in peer_grid}:
            runs = [p for p in peers if p[0] == name]
            chosen[name] = min(runs, key=lambda r: np.nan_to_num(r[2]["rmse"], nan=np.inf))[1]
        out["chosen"][kind] = chosen
    return out


def _show(kind, name, settings, r):
    print(kind, name, settings, {k: round(v, 4) for k, v in r.items() if isinstance(v, float)}, flush=True)


def full(args, save=lambda out: None):
    chosen = json.loads(args.chosen.read_text())["chosen"]
    out = {"cycles": args.cycles, "burn": args.burn, "seeds": args.seeds, "chosen": chosen, "runs": {},
           "chosen_from": str(args.chosen)}
    for kind in args.kinds:
        rows = out["runs"][kind] = {}
        for seed in args.seeds:
            model, xx, yy, truth = problem(kind, args.cycles, seed)
            for name, kw in chosen[kind].items():
                r = (run_ours(kind, yy, truth, args.burn, seed, **kw) if name == "sciffusion"
                     else run_dapper(dapper_method(name, **kw), model, xx, yy, truth, args.burn, seed + 2000))
                rows.setdefault(name, []).append({"seed": seed, **r})
                print(kind, seed, name, {k: round(v, 4) for k, v in r.items() if isinstance(v, float)}, flush=True)
            save({**out, "partial": f"{kind} through seed {seed}"})  # a stopped run keeps its finished seeds
    out["table"] = {kind: {name: {k: float(np.mean([r[k] for r in runs])) for k in
                                  ("rmse", "spread", "spread_skill", "crps", "sec_per_cycle") if k in runs[0]}
                           for name, runs in rows.items()} for kind, rows in out["runs"].items()}
    return out


def markdown(out) -> str:
    """The results table: mean (min-max over seeds) of each score."""
    lines = ["| obs | method | settings | RMSE | spread (rmv) | spread-skill | CRPS | s / cycle |", "|---" * 8 + "|"]
    for kind, rows in out["runs"].items():
        for name, runs in rows.items():
            cells = []
            for k in ("rmse", "spread", "spread_skill", "crps", "sec_per_cycle"):
                v = np.array([r.get(k, np.nan) for r in runs], dtype=float)
                cells.append(f"{v.mean():.3f}" if k == "sec_per_cycle" else f"{v.mean():.3f} ({v.min():.3f}-{v.max():.3f})")
            lines.append(f"| {kind} | {name} | {out['chosen'][kind][name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--validate", action="store_true")
    p.add_argument("--cycles", type=int, default=2200)
    p.add_argument("--burn", type=int, default=200)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--kinds", nargs="+", default=["linear", "arctan"])
    p.add_argument("--bandwidths", type=float, nargs="*", default=[0.6])
    p.add_argument("--chosen", type=Path, default=VALIDATION, help="JSON with the settings chosen on validation")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--inflations", type=float, nargs="*", default=None,
                   help="validation: sciffusion's linear grid is 12 steps, cg_iters 3 at these inflations")
    p.add_argument("--ours-grid", default=None,
                   help='validation: sciffusion settings to try instead of the built-in grid (JSON list of dicts)')
    p.add_argument("--peer-grid", default=None,
                   help='validation: DAPPER settings to try instead of the built-in grid (JSON list of '
                        '[method, settings] pairs, e.g. [["LETKF", {"infl": 1.05, "loc_rad": 4, "xN": 2}]])')
    p.add_argument("--select", choices=("rmse", "ssr"), default="rmse",
                   help="validation: lowest RMSE, or lowest RMSE among spread-skill 0.9-1.1 (else closest to 1)")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    start, meta = time.time(), run_meta()  # the load at the start of the run
    path = args.out or (VALIDATION if args.validate else RESULTS / "assimilate_lorenz96.json")

    def save(out):
        out = {**meta, "dapper_version": dpr.__version__, "wall_seconds": time.time() - start, **out}
        path.write_text(json.dumps(out, indent=1, default=float))
        return out

    out = save(validate(args) if args.validate else full(args, save))
    if not args.validate:
        print(markdown(out))
    print("wrote", path)


if __name__ == "__main__":
    main()
