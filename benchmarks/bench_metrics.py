"""Speed of sciffusion's ensemble scores against every exact peer, cell by cell.

    python benchmarks/bench_metrics.py            # full grid on (member, 4, 90, 144) float32
    python benchmarks/bench_metrics.py --quick    # M = 5, 32, 200 on (member, 2, 90, 144)

The CRPS table covers {standard, fair} x M x {no NaN, 5% NaN observations, 30% land (NaN in
the observation and every member at the same points), 1% NaN members} x {member-first,
member-last}. Each contender gets the same float32 N(0, 1) ensemble and N(0.1, 1.2^2)
observations in the cell's layout, scored pointwise. Peers: properscoring and xskillscore
(standard), scores (``ecdf`` / ``fair``), scoringrules with ``backend="numba"`` (``qd`` /
``pwm``; it propagates NaN members, so it is left out of the NaN-member cells). Ours is
``crps_ensemble`` on numpy arrays. Time is the best of ``--repeats`` runs with BLAS threads at
their default (a contender slower than ``--max-seconds`` per run is run fewer times); the ratio is
ours / fastest peer (below 1: ours is faster), ``x sort`` is ours / one ``np.sort`` along the
member axis of the same array, ``peak`` is tracemalloc's peak of one run of ours / input size,
and ``|diff|`` the largest difference from any peer at points both score. Also timed: the energy
score against ``scoringrules.es_ensemble`` (numba), the spread-skill ratio against the numpy and
xarray one-liners, and the rank histogram against scores and xskillscore. Writes
``benchmarks/results/bench_metrics.json`` with the git commit, command line and machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import xarray as xr

import sciffusion.metrics as sm
from _run_meta import run_meta

CASES = ("none", "obs 5%", "land 30%", "members 1%")
DIMS = ("time", "lat", "lon")


def timeit(fn, repeats, max_seconds):
    """Best of ``repeats`` runs; stops early once one run took more than ``max_seconds``."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        del out
        if best > max_seconds:
            break
    return best


def peak_bytes(fn):
    gc.collect()
    tracemalloc.start()
    out = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del out
    return peak


def make_case(fc, obs, case, rng):
    """The ensemble and observation of one NaN case (copies only where NaN is written)."""
    if case == "obs 5%":
        obs = obs.copy()
        obs[rng.random(obs.shape) < 0.05] = np.nan
    elif case == "land 30%":
        land = rng.random(obs.shape) < 0.3
        fc, obs = fc.copy(), obs.copy()
        fc[:, land], obs[land] = np.nan, np.nan
    elif case == "members 1%":
        fc = fc.copy()
        fc[rng.random(fc.shape) < 0.01] = np.nan
    return fc, obs


def crps_contenders(fc, obs, layout, fair, case):
    """name -> zero-argument callable returning pointwise CRPS in the observation's shape."""
    import properscoring as ps
    import scores.probability as sp
    import scoringrules as sr
    import xskillscore as xs

    axis = 0 if layout == "first" else -1
    dims = ("member", *DIMS) if layout == "first" else (*DIMS, "member")
    fc_da, obs_da = xr.DataArray(fc, dims=dims), xr.DataArray(obs, dims=DIMS)
    out = {"ours": lambda: sm.crps_ensemble(fc, obs, member_dim=axis, fair=fair)}
    if not fair:
        out["properscoring"] = lambda: ps.crps_ensemble(obs, fc, axis=axis)
        out["xskillscore"] = lambda: xs.crps_ensemble(obs_da, fc_da, dim=[]).transpose(*DIMS).values
    out["scores"] = lambda: sp.crps_for_ensemble(fc_da, obs_da, "member", method="fair" if fair else "ecdf",
                                                 preserve_dims="all").transpose(*DIMS).values
    if case != "members 1%":
        est = "pwm" if fair else "qd"
        out["scoringrules"] = lambda: sr.crps_ensemble(obs, fc, m_axis=axis, estimator=est, backend="numba")
    return out


def crps_table(ms, shape, repeats, max_seconds, seed=0):
    rng = np.random.default_rng(seed)
    cells = []
    for m in ms:
        base = rng.standard_normal((m, *shape), dtype=np.float32)
        obs0 = (0.1 + 1.2 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        for case in CASES:
            fc_first, obs = make_case(base, obs0, case, np.random.default_rng(seed + 1))
            for layout in ("first", "last"):
                fc = fc_first if layout == "first" else np.ascontiguousarray(np.moveaxis(fc_first, 0, -1))
                floor = timeit(lambda: np.sort(fc, axis=0 if layout == "first" else -1), repeats, max_seconds)
                for fair in (False, True):
                    cell = {"estimator": "fair" if fair else "standard", "members": m, "nan": case,
                            "layout": layout, "seconds": {}, "floor_sort_seconds": floor}
                    results = {}
                    for name, fn in crps_contenders(fc, obs, layout, fair, case).items():
                        results[name] = np.asarray(fn())
                        cell["seconds"][name] = timeit(fn, repeats, max_seconds)
                    ours = results.pop("ours")
                    cell["peak_over_input"] = peak_bytes(
                        lambda: sm.crps_ensemble(fc, obs, member_dim=0 if layout == "first" else -1,
                                                 fair=fair)) / fc.nbytes
                    both = [np.isfinite(ours) & np.isfinite(r) for r in results.values()]
                    cell["max_abs_diff"] = max(float(np.abs(ours - r)[b].max(initial=0))
                                               for r, b in zip(results.values(), both))
                    peers = {k: v for k, v in cell["seconds"].items() if k != "ours"}
                    best = min(peers, key=peers.get)
                    cell["best_peer"] = best
                    cell["ratio_to_best_peer"] = cell["seconds"]["ours"] / peers[best]
                    cell["ratio_to_sort"] = cell["seconds"]["ours"] / floor
                    cells.append(cell)
                    print(format_cell(cell), flush=True)
    return cells


PEERS = ("properscoring", "xskillscore", "scores", "scoringrules")


def header():
    cols = "".join(f"{p[:12]:>13s}" for p in PEERS)
    return (f"{'estimator':9s} {'M':>4s} {'NaN':11s} {'layout':6s} {'ours ms':>9s}{cols} "
            f"{'ours/best':>9s} {'x sort':>7s} {'peak':>5s} {'|diff|':>8s}")


def format_cell(c):
    ms = "".join(f"{1e3 * c['seconds'][p]:13.2f}" if p in c["seconds"] else f"{'-':>13s}" for p in PEERS)
    flag = " !" if c["ratio_to_best_peer"] > 1 else ""
    return (f"{c['estimator']:9s} {c['members']:4d} {c['nan']:11s} {c['layout']:6s} "
            f"{1e3 * c['seconds']['ours']:9.2f}{ms} {c['ratio_to_best_peer']:9.2f} "
            f"{c['ratio_to_sort']:7.2f} {c['peak_over_input']:5.2f} {c['max_abs_diff']:8.1e}{flag}")


def energy_section(cases, m, d, repeats, max_seconds, seed=0):
    import scoringrules as sr

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((cases, m, d))
    y = rng.standard_normal((cases, d))
    fc, ob = xr.DataArray(x, dims=("case", "member", "e")), xr.DataArray(y, dims=("case", "e"))
    ours = lambda: sm.energy_score(fc, ob, event_dims="e").values  # noqa: E731
    peer = lambda: sr.es_ensemble(y, x, m_axis=-2, v_axis=-1, backend="numba")  # noqa: E731
    peer()  # jit
    res = {"cases": cases, "members": m, "event": d, "dtype": "float64",
           "ours_seconds": timeit(ours, repeats, max_seconds),
           "scoringrules_numba_seconds": timeit(peer, repeats, max_seconds),
           "ours_peak_over_input": peak_bytes(ours) / x.nbytes,
           "max_rel_diff": float(np.max(np.abs(ours() / peer() - 1)))}
    res["ratio"] = res["ours_seconds"] / res["scoringrules_numba_seconds"]
    return res


def spread_skill_section(m, shape, repeats, max_seconds, seed=0):
    rng = np.random.default_rng(seed)
    fc = rng.standard_normal((m, *shape), dtype=np.float32)
    obs = rng.standard_normal(shape, dtype=np.float32)
    fc_da, obs_da = xr.DataArray(fc, dims=("member", *DIMS)), xr.DataArray(obs, dims=DIMS)
    c = {"ours": lambda: float(sm.spread_skill_ratio(fc_da, obs_da, reduce_dims="all", correction=False)),
         "numpy one-liner": lambda: float(np.sqrt(fc.var(0, ddof=1).mean())
                                          / np.sqrt(((fc.mean(0) - obs) ** 2).mean())),
         "xarray one-liner": lambda: float(np.sqrt(fc_da.var("member", ddof=1).mean())
                                           / np.sqrt(((fc_da.mean("member") - obs_da) ** 2).mean()))}
    vals = {k: f() for k, f in c.items()}
    res = {"members": m, "seconds": {k: timeit(f, repeats, max_seconds) for k, f in c.items()},
           "max_rel_diff": max(abs(v / vals["ours"] - 1) for v in vals.values())}
    res["ratio_to_numpy"] = res["seconds"]["ours"] / res["seconds"]["numpy one-liner"]
    res["ratio_to_xarray"] = res["seconds"]["ours"] / res["seconds"]["xarray one-liner"]
    return res


def rank_section(m, shape, repeats, max_seconds, seed=0):
    import scores.probability as sp
    import xskillscore as xs

    rng = np.random.default_rng(seed)
    fc_da = xr.DataArray(rng.standard_normal((m, *shape), dtype=np.float32), dims=("member", *DIMS))
    obs_da = xr.DataArray(rng.standard_normal(shape, dtype=np.float32), dims=DIMS)
    c = {"ours": lambda: sm.rank_histogram(fc_da, obs_da, reduce_dims="all"),
         "scores": lambda: sp.rank_histogram(fc_da, obs_da, "member"),
         "xskillscore": lambda: xs.rank_histogram(obs_da, fc_da)}
    return {"members": m, "seconds": {k: timeit(f, repeats, max_seconds) for k, f in c.items()}}


def warm_up():
    """Compile the numba peers for float32 and float64 before anything is timed."""
    import properscoring as ps
    import scoringrules as sr

    for dt in (np.float32, np.float64):
        fc, ob = np.zeros((3, 4), dt), np.zeros(4, dt)
        ps.crps_ensemble(ob, fc, axis=0)
        for est in ("qd", "pwm"):
            sr.crps_ensemble(ob, fc, m_axis=0, estimator=est, backend="numba")


def machine():
    import numba
    import properscoring
    import scores
    import scoringrules
    import xskillscore

    return {**run_meta(),
            "versions": {"numpy": np.__version__, "xarray": xr.__version__, "numba": numba.__version__,
                         "properscoring": getattr(properscoring, "__version__", "0.1"),
                         "scores": scores.__version__, "scoringrules": scoringrules.__version__,
                         "xskillscore": xskillscore.__version__}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller grid and sizes (a few minutes less)")
    ap.add_argument("--members", type=int, nargs="*", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-seconds", type=float, default=2.0, help="slower runs are repeated less")
    ap.add_argument("--out", default=None, help="JSON path (default results/bench_metrics.json; "
                    "with --quick, bench_metrics_quick.json in the temp directory)")
    args = ap.parse_args()
    if args.out is None:
        args.out = (Path(tempfile.gettempdir()) / "bench_metrics_quick.json" if args.quick
                    else Path(__file__).parent / "results" / "bench_metrics.json")
    try:  # properscoring without numba silently falls back to an O(M^2) path: not a fair peer
        import numba  # noqa: F401
    except ImportError:
        sys.exit("bench_metrics needs numba and the peers: pip install '.[bench]'")
    t0 = time.perf_counter()
    meta = machine()
    shape = (2, 90, 144) if args.quick else (4, 90, 144)
    ms = args.members or ([5, 32, 200] if args.quick else [5, 10, 32, 50, 200])
    warm_up()
    print(f"CRPS on (member, {', '.join(map(str, shape))}) float32; times in ms, best of {args.repeats}")
    print(header())
    cells = crps_table(ms, shape, args.repeats, args.max_seconds)
    es = energy_section(20 if args.quick else 100, 50, 1000, args.repeats, args.max_seconds)
    print(f"\nenergy score M=50 d=1000, {es['cases']} cases: ours {1e3 * es['ours_seconds']:.1f} ms, "
          f"scoringrules numba {1e3 * es['scoringrules_numba_seconds']:.1f} ms, ratio {es['ratio']:.2f}, "
          f"peak/input {es['ours_peak_over_input']:.2f}, max rel diff {es['max_rel_diff']:.1e}")
    ssr = [spread_skill_section(m, shape, args.repeats, args.max_seconds) for m in (10, 50)]
    for r in ssr:
        s = r["seconds"]
        print(f"spread-skill M={r['members']}: ours {1e3 * s['ours']:.2f} ms, numpy one-liner "
              f"{1e3 * s['numpy one-liner']:.2f} ms ({r['ratio_to_numpy']:.2f}x), xarray one-liner "
              f"{1e3 * s['xarray one-liner']:.2f} ms ({r['ratio_to_xarray']:.2f}x), max rel diff "
              f"{r['max_rel_diff']:.1e}")
    rank = rank_section(50, shape, args.repeats, args.max_seconds)
    print("rank histogram M=50: " + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in rank["seconds"].items()))
    slower = [c for c in cells if c["ratio_to_best_peer"] > 1]
    summary = {"cells": len(cells), "cells_where_a_peer_is_faster": len(slower),
               "worst_ratio_to_best_peer": max(c["ratio_to_best_peer"] for c in cells),
               "worst_ratio_to_sort": max(c["ratio_to_sort"] for c in cells),
               "worst_peak_over_input": max(c["peak_over_input"] for c in cells),
               "max_abs_diff": max(c["max_abs_diff"] for c in cells)}
    meta["wall_seconds"] = time.perf_counter() - t0
    print("\nsummary: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in summary.items()) + f"; wall {meta['wall_seconds']:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta.update({"shape": ["member", *shape], "dtype": "float32", "repeats": args.repeats,
                 "note": "seconds are best of repeats; ratios are ours / fastest peer"})
    out.write_text(json.dumps({"meta": meta, "summary": summary, "crps": cells, "energy_score": es,
                               "spread_skill_ratio": ssr, "rank_histogram": rank}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
