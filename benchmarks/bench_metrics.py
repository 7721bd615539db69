"""Speed and peak memory of sciffusion's ensemble CRPS and rank histogram against the peers.

    python benchmarks/bench_metrics.py            # M = 10, 50, 200 on (member, 8, 181, 360) float32
    python benchmarks/bench_metrics.py --quick    # small smoke run

Every contender scores the same random N(0, 1) float32 ensemble (member-first, as sciffusion
writes ensembles) against observations from N(0.1, 1.2^2), pointwise (no reduction). Time is the
best of ``--repeats`` runs (slow peers: fewer, see ``max_seconds``); peak memory is the
tracemalloc peak of one extra run (numpy allocations; memory numba allocates outside numpy is
not seen), reported as a multiple of the input size. The floor is one ``np.sort`` of the
ensemble along its member axis. Prints a ratio table and writes
``benchmarks/results/bench_metrics.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
import tracemalloc
from pathlib import Path

import numpy as np
import xarray as xr

import sciffusion.metrics as sm


def timeit(fn, repeats, max_seconds=10.0):
    """Best of ``repeats`` runs; a contender slower than ``max_seconds`` per run is run once."""
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


def peak_mib(fn):
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    res = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del res
    return peak / 2**20


def contenders(fc, obs, m):
    """name -> (kind, zero-argument callable). ``kind`` is crps, rank or floor."""
    import properscoring as ps
    import scores.probability as sp
    import scoringrules as sr
    import xskillscore as xs

    dims = ("member", "time", "lat", "lon")
    fc_da, obs_da = xr.DataArray(fc, dims=dims), xr.DataArray(obs, dims=dims[1:])
    c = {
        "floor: np.sort(member axis)": ("floor", lambda: np.sort(fc, axis=0)),
        "floor: np.sort member-last copy (excl. transpose)": ("floor*", None),
        "ours crps standard": ("crps", lambda: sm.crps_ensemble(fc_da, obs_da)),
        "ours crps fair": ("crps", lambda: sm.crps_ensemble(fc_da, obs_da, fair=True)),
        "ours crps fair (numpy in/out)": ("crps", lambda: sm.crps_ensemble(fc, obs, fair=True)),
        "properscoring crps_ensemble": ("crps", lambda: ps.crps_ensemble(obs, fc, axis=0)),
        "xskillscore crps_ensemble": ("crps", lambda: xs.crps_ensemble(obs_da, fc_da, dim=[])),
        "scores crps ecdf": ("crps", lambda: sp.crps_for_ensemble(fc_da, obs_da, "member", method="ecdf",
                                                                   preserve_dims="all")),
        "scores crps fair": ("crps", lambda: sp.crps_for_ensemble(fc_da, obs_da, "member", method="fair",
                                                                   preserve_dims="all")),
        "scoringrules pwm (numba)": ("crps", lambda: sr.crps_ensemble(obs, fc, m_axis=0, estimator="pwm",
                                                                        backend="numba")),
        "ours rank_histogram": ("rank", lambda: sm.rank_histogram(fc_da, obs_da, reduce_dims="all")),
        "scores rank_histogram": ("rank", lambda: sp.rank_histogram(fc_da, obs_da, "member")),
        "xskillscore rank_histogram": ("rank", lambda: xs.rank_histogram(obs_da, fc_da)),
    }
    return c


def run(ms, shape, repeats, seed=0):
    import scoringrules as sr

    sr.crps_ensemble(np.zeros(3), np.zeros((3, 4)), estimator="pwm", backend="numba")  # jit warm-up
    rng = np.random.default_rng(seed)
    results = {}
    for m in ms:
        fc = rng.standard_normal((m, *shape), dtype=np.float32)
        obs = (0.1 + 1.2 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        in_mib = fc.nbytes / 2**20
        rows = {}
        for name, (kind, fn) in contenders(fc, obs, m).items():
            if fn is None:  # member-last floor: sort of an already member-last contiguous copy
                ml = np.ascontiguousarray(np.moveaxis(fc, 0, -1))
                t = timeit(lambda: ml.sort(axis=-1), repeats)
                rows[name] = {"kind": kind, "seconds": t, "peak_mib": 0.0}
                del ml
                continue
            t = timeit(fn, repeats)
            pk = peak_mib(fn)
            rows[name] = {"kind": kind, "seconds": t, "peak_mib": pk}
            print(f"  M={m:4d} {name:50s} {t:8.3f} s  peak {pk:8.0f} MiB", flush=True)
        # agreement check against properscoring (float64 internally)
        import properscoring as ps

        ref = ps.crps_ensemble(obs, fc, axis=0)
        ours = sm.crps_ensemble(fc, obs)
        results[m] = {"input_mib": in_mib, "rows": rows,
                      "max_abs_diff_vs_properscoring": float(np.nanmax(np.abs(ours - ref)))}
    return results


def report(results):
    lines = []
    for m, res in results.items():
        rows = res["rows"]
        floor = rows["floor: np.sort(member axis)"]["seconds"]
        ours = {k: rows[k]["seconds"] for k in ("ours crps standard", "ours crps fair")}
        ours_rank = rows["ours rank_histogram"]["seconds"]
        lines.append(f"\nM = {m}  (input {res['input_mib']:.0f} MiB; max |ours - properscoring| = "
                     f"{res['max_abs_diff_vs_properscoring']:.1e})")
        lines.append(f"{'implementation':52s} {'seconds':>9s} {'x floor':>8s} {'x ours':>8s} {'peak/input':>10s}")
        for name, r in rows.items():
            base = ours_rank if r["kind"] == "rank" else min(ours.values())
            lines.append(f"{name:52s} {r['seconds']:9.3f} {r['seconds'] / floor:8.2f} "
                         f"{r['seconds'] / base:8.2f} {r['peak_mib'] / res['input_mib']:10.2f}")
        peers = [r["seconds"] for n, r in rows.items() if r["kind"] == "crps" and not n.startswith("ours")]
        worst_ours = max(ours.values())
        res["targets"] = {
            "crps_over_floor": worst_ours / floor,
            "crps_faster_than_every_peer": bool(worst_ours < min(peers)),
            "crps_peak_over_input": max(rows[k]["peak_mib"] for k in ours) / res["input_mib"],
            "rank_speedup_vs_scores": rows["scores rank_histogram"]["seconds"] / ours_rank,
            "rank_speedup_vs_xskillscore": rows["xskillscore rank_histogram"]["seconds"] / ours_rank,
        }
        lines.append("targets: " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in res["targets"].items()))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--members", type=int, nargs="*", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_metrics.json"))
    args = ap.parse_args()
    shape = (2, 19, 36) if args.quick else (8, 181, 360)
    ms = args.members or ([5, 20] if args.quick else [10, 50, 200])
    results = run(ms, shape, args.repeats)
    text = report(results)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"shape": ["member", *shape], "dtype": "float32", "repeats": args.repeats,
            "machine": platform.platform(), "processor": platform.processor(), "numpy": np.__version__,
            "note": "times are best-of-repeats seconds; peak is tracemalloc MiB of one run"}
    out.write_text(json.dumps({"meta": meta, "results": {str(k): v for k, v in results.items()}}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
