"""Scoring a zarr ensemble several times larger than the workers' memory on dask.distributed.

    python benchmarks/scale_dask.py                                # 2.4 GiB store, 2 x 400 MiB workers
    python benchmarks/scale_dask.py --times 12 --repeats 1         # small smoke run

Writes a random float32 ensemble (member=50, time=T, lat=181, lon=360; one 12.4 MiB chunk per
time step, member whole) and its truth to a zarr store under /tmp, then scores it the way
``sciffusion score`` does - ``score_dataset`` (fair CRPS, RMSE, bias, spread, spread-skill ratio
over lat/lon with area weights, one number per time) - on a ``LocalCluster`` of 1 and then 2
single-threaded worker processes, each with ``memory_limit=--worker-memory``. A thread inside each
worker samples its resident set size every 5 ms, so the reported peak is the worker process's
real footprint (interpreter, libraries and chunks), to compare with the limit. Throughput is
store bytes scored per second (best of ``--repeats``). The scores are checked against the same
graph run on the threaded scheduler in this process. The store is deleted at the end; results go
to ``benchmarks/results/scale_dask.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

M, NLAT, NLON = 50, 181, 360


def write_store(path: Path, times: int, seed: int = 0) -> None:
    import dask
    import dask.array as da
    import xarray as xr

    rng = da.random.default_rng(seed)
    chunks = (M, 1, NLAT, NLON)
    fc = rng.standard_normal((M, times, NLAT, NLON), chunks=chunks, dtype=np.float32)
    obs = 0.1 + 1.2 * rng.standard_normal((times, NLAT, NLON), chunks=chunks[1:], dtype=np.float32)
    coords = {"time": np.arange(times), "lat": np.linspace(-90, 90, NLAT), "lon": np.arange(NLON) * 1.0}
    with dask.config.set(scheduler="threads"):
        xr.Dataset({"t2m": (("member", "time", "lat", "lon"), fc)}, coords=coords).to_zarr(
            path / "forecast.zarr", mode="w", consolidated=False)
        xr.Dataset({"t2m": (("time", "lat", "lon"), obs.astype(np.float32))}, coords=coords).to_zarr(
            path / "truth.zarr", mode="w", consolidated=False)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def start_sampler(dask_worker, interval: float = 0.005) -> int:
    """Run in each worker (``client.run``): start a thread recording the worker's peak RSS."""
    state = {"peak": _rss(), "running": True}

    def loop():
        while state["running"]:
            state["peak"] = max(state["peak"], _rss())
            time.sleep(interval)

    threading.Thread(target=loop, daemon=True).start()
    dask_worker._sciffusion_rss = state
    return state["peak"]


def stop_sampler(dask_worker) -> int:
    state = dask_worker._sciffusion_rss
    state["running"] = False
    return max(state["peak"], _rss())


def scores(path: Path):
    import xarray as xr

    from sciffusion.commands.score import score_dataset

    fc = xr.open_zarr(path / "forecast.zarr", consolidated=False)
    ob = xr.open_zarr(path / "truth.zarr", consolidated=False)
    return score_dataset(fc, ob, reduce=["lat", "lon"], fair=True)["t2m"], fc.nbytes + ob.nbytes


def run_cluster(path: Path, workers: int, memory: str, repeats: int) -> dict:
    import dask
    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    lazy, nbytes = scores(path)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=memory,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        with dask.config.set(scheduler=client):  # warm-up: imports and codecs in every worker
            lazy.isel(time=slice(0, 2 * workers)).compute()
        baseline = client.run(start_sampler)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            with dask.config.set(scheduler=client):
                result = lazy.compute()
            times.append(time.perf_counter() - t0)
        peaks = client.run(stop_sampler)
        alive = len(client.nthreads())
    limit = parse_bytes(memory)
    best = min(times)
    return {
        "workers": workers, "worker_memory_limit_mib": limit / 2**20, "seconds": times, "best_seconds": best,
        "throughput_gib_per_s": nbytes / 2**30 / best,
        "worker_baseline_rss_mib": sorted(v / 2**20 for v in baseline.values()),
        "worker_peak_rss_mib": sorted(v / 2**20 for v in peaks.values()),
        "peak_over_limit": max(peaks.values()) / limit, "workers_alive_at_end": alive,
        "result": result,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--times", type=int, default=200, help="time steps (200 -> 2.4 GiB forecast)")
    ap.add_argument("--worker-memory", default="400MiB", help="memory_limit of each worker (default 400MiB)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per cluster size (best is reported)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "scale_dask.json"))
    args = ap.parse_args()

    import dask
    from dask.utils import parse_bytes

    tmp = Path(tempfile.mkdtemp(prefix="sciffusion_scale_dask_", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        write_store(tmp, args.times)
        t_write = time.perf_counter() - t0
        on_disk = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        lazy, nbytes = scores(tmp)
        runs = [run_cluster(tmp, n, args.worker_memory, args.repeats) for n in (1, 2)]
        with dask.config.set(scheduler="threads", num_workers=2):
            reference = lazy.compute()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    diffs = [max(float(np.max(np.abs(r["result"][k].values - reference[k].values))) for k in reference.data_vars)
             for r in runs]
    for r in runs:
        del r["result"]
    limit = parse_bytes(args.worker_memory)
    res = {
        "store_gib": nbytes / 2**30, "store_on_disk_gib": on_disk / 2**30, "chunk_mib": M * NLAT * NLON * 4 / 2**20,
        "n_chunks": args.times, "worker_memory_limit_mib": limit / 2**20,
        "store_over_one_worker_limit": nbytes / limit, "store_over_two_worker_limits": nbytes / (2 * limit),
        "write_seconds": t_write, "runs": runs,
        "speedup_2_vs_1_workers": runs[0]["best_seconds"] / runs[1]["best_seconds"],
        "max_abs_diff_vs_threaded": max(diffs),
        "mean_crps": float(reference["crps"].mean()),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs (shared)",
    }
    print(f"store {res['store_gib']:.2f} GiB = {res['store_over_one_worker_limit']:.1f} x one worker's "
          f"limit ({args.worker_memory}), {res['store_over_two_worker_limits']:.1f} x two")
    print(f"{'workers':>8} {'best s':>8} {'GiB/s':>7} {'peak RSS MiB':>14} {'peak/limit':>10}")
    for r in runs:
        print(f"{r['workers']:>8} {r['best_seconds']:>8.2f} {r['throughput_gib_per_s']:>7.3f} "
              f"{max(r['worker_peak_rss_mib']):>14.0f} {r['peak_over_limit']:>10.2f}")
    print(f"speed-up 2 vs 1 workers {res['speedup_2_vs_1_workers']:.2f}; "
          f"max |cluster - threaded| {res['max_abs_diff_vs_threaded']:.3g}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
