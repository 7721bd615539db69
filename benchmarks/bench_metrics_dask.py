"""Scoring a >= 2 GB zarr ensemble lazily with dask: peak memory and agreement with eager.

    python benchmarks/bench_metrics_dask.py                  # 2.0 GiB store under /tmp
    python benchmarks/bench_metrics_dask.py --times 16       # small smoke run

Writes a random float32 ensemble (member=50, time=T, lat=181, lon=360), chunked one time step
per chunk (12.4 MiB), and its truth to a zarr store under /tmp, then, in a fresh process, scores
it with ``crps_ensemble(..., fair=True, reduce_dims=["lat", "lon"], weights=area)`` (one number
per time) with the threaded scheduler while a sampler thread records the resident set size. Then
it loads the whole store into memory and scores it eagerly, and compares. The store is deleted
at the end. Results go to ``benchmarks/results/bench_metrics_dask.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

M, NLAT, NLON = 50, 181, 360


def write_store(path: Path, times: int, seed: int = 0):
    import dask.array as da
    import xarray as xr

    rng = da.random.default_rng(seed)
    chunks = (M, 1, NLAT, NLON)
    fc = rng.standard_normal((M, times, NLAT, NLON), chunks=chunks, dtype=np.float32)
    obs = (0.1 + 1.2 * rng.standard_normal((times, NLAT, NLON), chunks=chunks[1:], dtype=np.float32))
    coords = {"time": np.arange(times), "lat": np.linspace(-90, 90, NLAT), "lon": np.arange(NLON) * 1.0}
    xr.Dataset({"t2m": (("member", "time", "lat", "lon"), fc)}, coords=coords).to_zarr(
        path / "forecast.zarr", mode="w", consolidated=False)
    xr.Dataset({"t2m": (("time", "lat", "lon"), obs.astype(np.float32))}, coords=coords).to_zarr(
        path / "truth.zarr", mode="w", consolidated=False)


class RssSampler(threading.Thread):
    """Samples this process's resident set size (from /proc) every few milliseconds."""

    def __init__(self, interval=0.005):
        super().__init__(daemon=True)
        self.interval, self.peak, self.running = interval, 0, True

    @staticmethod
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def run(self):
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def stop(self):
        self.running = False
        self.join()
        return self.peak


def score(path: str) -> dict:
    """Run in a fresh process: lazy score with RSS sampling, then eager, then compare."""
    import dask
    import xarray as xr

    import sciffusion.metrics as sm

    fc = xr.open_zarr(Path(path) / "forecast.zarr", consolidated=False)["t2m"]
    ob = xr.open_zarr(Path(path) / "truth.zarr", consolidated=False)["t2m"]
    w = sm.latitude_weights(fc.lat, "area")
    chunk_mib = M * NLAT * NLON * 4 / 2**20
    with dask.config.set(scheduler="threads", num_workers=2):  # warm-up: imports, codecs, pools
        sm.crps_ensemble(fc.isel(time=[0]), ob.isel(time=[0]), fair=True, reduce_dims=["lat", "lon"],
                         weights=w).compute()
    base = RssSampler.rss()
    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    lazy = sm.crps_ensemble(fc, ob, fair=True, reduce_dims=["lat", "lon"], weights=w)
    with dask.config.set(scheduler="threads", num_workers=2):
        lazy_values = lazy.compute().values
    t_lazy = time.perf_counter() - t0
    peak = sampler.stop() - base
    tracemalloc.start()  # second run: peak of live (numpy + Python) allocations, no allocator slack
    with dask.config.set(scheduler="threads", num_workers=2):
        lazy.compute()
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    t0 = time.perf_counter()
    fc_e, ob_e = fc.load(), ob.load()
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    eager = sm.crps_ensemble(fc_e, ob_e, fair=True, reduce_dims=["lat", "lon"], weights=w).values
    t_eager = time.perf_counter() - t0
    return {
        "store_gib": (fc.nbytes + ob.nbytes) / 2**30,
        "chunk_mib": chunk_mib,
        "n_chunks": int(fc.sizes["time"]),
        "lazy_seconds": t_lazy,
        "lazy_peak_rss_above_baseline_mib": peak / 2**20,
        "lazy_peak_in_chunks": peak / 2**20 / chunk_mib,
        "lazy_peak_traced_mib": traced / 2**20,
        "lazy_peak_traced_in_chunks": traced / 2**20 / chunk_mib,
        "eager_load_seconds": t_load,
        "eager_score_seconds": t_eager,
        "max_abs_diff_lazy_vs_eager": float(np.max(np.abs(lazy_values - eager))),
        "max_rel_diff_lazy_vs_eager": float(np.max(np.abs(lazy_values - eager) / np.abs(eager))),
        "mean_crps": float(eager.mean()),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--times", type=int, default=170, help="time steps (170 -> 2.0 GiB forecast)")
    ap.add_argument("--score", default=None, help=argparse.SUPPRESS)  # internal: child process
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_metrics_dask.json"))
    args = ap.parse_args()
    if args.score:
        print(json.dumps(score(args.score)))
        return
    tmp = Path(tempfile.mkdtemp(prefix="sciffusion_bench_dask_", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        write_store(tmp, args.times)
        t_write = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) / 2**30
        proc = subprocess.run([sys.executable, __file__, "--score", str(tmp)], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res.update(write_seconds=t_write, store_on_disk_gib=size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for k, v in res.items():
        print(f"{k:36s} {v:.4g}" if isinstance(v, float) else f"{k:36s} {v}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
