"""The end-to-end demo: simulate fields, train a conditional model, sample an ensemble, score it.

The data is a stochastic advection process on a periodic grid whose conditional law is known
exactly, so the demo can show how close the learned ensemble is to the perfect one:

    u(t+1) = a * shift(u(t)) + sqrt(1 - a^2) * xi(t),     xi ~ GRF, unit variance,

so ``u(t+1) | u(t) ~ N(a shift(u(t)), (1 - a^2) C)``: per-point mean ``a shift(u(t))`` and
standard deviation ``sqrt(1 - a^2)``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr


def grf(shape, n, *, length_scale=4.0, generator=None) -> torch.Tensor:
    """``n`` periodic Gaussian random fields on ``shape`` with unit variance per point and
    power spectrum ``(1 + (k l)^2)^-2`` (Matern-like, ``l`` in grid points)."""
    ky = torch.fft.fftfreq(shape[0]) * 2 * np.pi
    kx = torch.fft.fftfreq(shape[1]) * 2 * np.pi
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    amp = (1 + k2 * length_scale**2) ** -1.0
    amp = amp / amp.pow(2).sum().sqrt()
    white = torch.randn(n, *shape, generator=generator, dtype=torch.float64)
    field = torch.fft.ifft2(torch.fft.fft2(white) * amp).real * np.sqrt(shape[0] * shape[1])
    return field


def demo_dataset(n_time: int = 1500, size: int = 32, a: float = 0.9, shift: int = 1, seed: int = 0) -> xr.Dataset:
    """One trajectory of the advected-GRF process as an xarray Dataset ``u(time, y, x)``."""
    g = torch.Generator().manual_seed(seed)
    xi = grf((size, size), n_time, generator=g)
    u = torch.empty(n_time, size, size, dtype=torch.float64)
    u[0] = xi[0]
    for t in range(1, n_time):
        u[t] = a * torch.roll(u[t - 1], shift, dims=-1) + np.sqrt(1 - a**2) * xi[t]
    coords = {"time": np.arange(n_time, dtype=np.int64), "y": np.arange(size, dtype=np.float64),
              "x": np.arange(size, dtype=np.float64)}
    ds = xr.Dataset({"u": (("time", "y", "x"), u.numpy().astype(np.float32),
                           {"long_name": "advected random field", "units": "1"})}, coords=coords)
    ds["time"].attrs.update(long_name="time step", units="steps")
    ds.attrs.update(title="sciffusion demo: advected Gaussian random field", a=a, shift=shift, seed=seed,
                    conditional_std=float(np.sqrt(1 - a**2)))
    return ds


def _scores(ens: np.ndarray, truth: np.ndarray) -> dict:
    """Ensemble-mean RMSE, spread (with the (M+1)/M correction in the ratio) and fair CRPS."""
    m = ens.shape[1]
    mean = ens.mean(1)
    rmse = float(np.sqrt(((mean - truth) ** 2).mean()))
    spread = float(np.sqrt(ens.var(1, ddof=1).mean()))
    crps = float(np.abs(ens - truth[:, None]).mean() - 0.5 * np.abs(ens[:, :, None] - ens[:, None, :]).sum((1, 2)).mean() / (m * (m - 1)))
    return {"rmse": rmse, "spread": spread, "spread_skill": spread * np.sqrt((m + 1) / m) / rmse, "crps_fair": crps}


def run_demo(out: str | Path = "sciffusion_demo", *, steps: int = 400, members: int = 16, cases: int = 16,
             size: int = 32, seed: int = 0, progress: bool = True, overwrite: bool = True) -> dict:
    """Simulate, train (``steps`` optimiser steps), sample ``members`` members for ``cases``
    held-out conditions, write ``data.zarr``, ``run/`` (checkpoints) and ``ensemble.zarr`` under
    ``out``, and return (and write as ``summary.json``) the skill table."""
    from sciffusion.data import write_zarr
    from sciffusion.recipes import sample_from_checkpoint, train_from_config

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.perf_counter()
    ds = demo_dataset(size=size, seed=seed)
    n_test = cases + 1
    train_ds, test_ds = ds.isel(time=slice(0, -n_test)), ds.isel(time=slice(-n_test, None))
    write_zarr(ds, out / "data.zarr", mode="w" if overwrite else "w-")
    timings["simulate_s"] = time.perf_counter() - t0

    config = {
        "data": {"variables": ["u"], "grid_dims": ["y", "x"], "along": "time", "offset": 1, "validation_fraction": 0.05},
        "model": {"net": "UNet2d", "sigma_data": 1.0,
                  "kwargs": {"channels": [16, 32], "blocks_per_level": 1, "padding": "circular", "attention_levels": []}},
        "training": {"out_dir": str(out / "run"), "steps": steps, "batch_size": 32, "lr": 2e-3, "warmup_steps": 50,
                     "ema_decay": 0.98, "checkpoint_every": max(steps // 2, 1), "seed": seed},
    }
    t0 = time.perf_counter()
    trainer = train_from_config(config, ds=train_ds, progress=progress, resume=not overwrite)
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ens = sample_from_checkpoint(out / "run", test_ds, out / "ensemble.zarr", members=members, steps=18,
                                 method="heun", seed=seed, batch_size=128, member_chunk=8,
                                 mode="w" if overwrite else "w-", progress=progress)
    timings["sample_s"] = time.perf_counter() - t0

    a, shift = ds.attrs["a"], ds.attrs["shift"]
    u = test_ds["u"].values.astype(np.float64)
    truth, prev = u[1:], u[:-1]
    exact_mean = a * np.roll(prev, shift, axis=-1)
    g = np.random.default_rng(seed)
    exact = exact_mean[:, None] + np.sqrt(1 - a**2) * np.stack(
        [grf((size, size), members, generator=torch.Generator().manual_seed(seed * 1000 + i)).numpy() for i in range(len(truth))])
    model = ens["u"].values.astype(np.float64)
    climatology = g.standard_normal(model.shape) * float(train_ds["u"].std())
    table = {"diffusion model": _scores(model, truth), "exact conditional": _scores(exact, truth),
             "climatology": _scores(climatology, truth)}
    summary = {"members": members, "cases": len(truth), "train_steps": steps,
               "final_loss": trainer.history[-1]["loss"] if trainer.history else None,
               "scores": table, "timings": timings, "ensemble": str(out / "ensemble.zarr")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"{'ensemble':20s} {'RMSE':>8s} {'spread':>8s} {'spread/skill':>13s} {'CRPS (fair)':>12s}"]
    for name, s in summary["scores"].items():
        lines.append(f"{name:20s} {s['rmse']:8.3f} {s['spread']:8.3f} {s['spread_skill']:13.2f} {s['crps_fair']:12.3f}")
    t = summary["timings"]
    lines.append(f"\n{summary['members']} members x {summary['cases']} cases; simulate {t['simulate_s']:.1f} s, "
                 f"train {t['train_s']:.1f} s ({summary['train_steps']} steps), sample {t['sample_s']:.1f} s")
    lines.append(f"ensemble written to {summary['ensemble']}")
    return "\n".join(lines)
