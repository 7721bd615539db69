"""Reference outputs of every emulator, for the bit-for-bit test of issue 20.

Each ``recipe_*`` function below trains one emulator for a few steps on tiny synthetic data
(numpy-generated, so the data do not depend on sciffusion) with fixed seeds and one torch
thread, generates a few members, and returns the float32 output arrays and a fingerprint of the
trained weights (the SHA-256 of the parameter bytes and their first values). Run as a script
(``python tests/data/make_reference_outputs.py``) it writes them to ``reference_outputs.npz``
beside it; ``tests/test_reference_outputs.py`` reruns each recipe and compares bit for bit.

The saved file was written by the code as of commit 4185c71 (before the issue-20 redesign).
Regenerate it only when a change of results is intended, and say so in the commit.

Each recipe seeds the global torch RNG first (``torch.manual_seed(GLOBAL_SEED)``): the outputs
must not depend on it, but if some code path does read global state, the test then fails the
same way every time instead of depending on which tests ran before.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from sciffusion.training import torch_threads

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "reference_outputs.npz"
GLOBAL_SEED = 1234
FIRST_WEIGHTS = 16  # leading parameter values kept as readable numbers next to the hash


def fingerprint(*modules: torch.nn.Module) -> dict[str, np.ndarray]:
    """SHA-256 (32 uint8) of the parameters' float32 bytes in order, and their first values."""
    flat = torch.cat([p.detach().reshape(-1).float().cpu() for m in modules for p in m.parameters()])
    digest = hashlib.sha256(flat.numpy().tobytes()).digest()
    return {"weights_sha256": np.frombuffer(digest, np.uint8).copy(), "weights_first": flat[:FIRST_WEIGHTS].numpy().copy()}


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


# ----------------------------------------------------------------------------- tiny data
def seeds_data(n=16, members=4, sites=8, seed=0) -> xr.Dataset:
    """Ensembles on (init_time, lead_time, member, k): a common state plus member noise, truth beside."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n, 2, 1, sites))
    x = c + 0.5 * rng.normal(size=(n, 2, members, sites))
    dims = ("init_time", "lead_time", "member", "k")
    return xr.Dataset({"x": (dims, x.astype(np.float32), {"units": "1"}),
                       "x_truth": (dims[:2] + dims[3:], (c[:, :, 0] + 1.0).astype(np.float32))},
                      coords={"init_time": np.arange(n), "lead_time": [1.0, 2.0], "member": np.arange(members),
                              "k": np.arange(sites)})


def ar1_data(n_runs=2, n_times=20, n_sites=8, seed=0) -> xr.Dataset:
    """AR(1) trajectories x(t+1) = 0.8 x(t) + 0.5 eps on (run, time, site)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n_runs, n_times, n_sites))
    x[:, 0] = rng.normal(0, 0.5 / np.sqrt(1 - 0.64), (n_runs, n_sites))
    for t in range(1, n_times):
        x[:, t] = 0.8 * x[:, t - 1] + 0.5 * rng.normal(size=(n_runs, n_sites))
    return xr.Dataset({"x": (("run", "time", "site"), x, {"units": "m"})},
                      coords={"time": np.arange(n_times) * 0.5, "site": np.arange(n_sites)})


def sst_data(n_time=4, seed=0) -> xr.Dataset:
    """A 16 x 16 global-longitude field with a NaN 'land' corner."""
    rng = np.random.default_rng(seed)
    lat, lon = np.linspace(-60, 60, 16), np.arange(16) * 22.5
    y, x = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    v = 290 + 5 * np.cos(y) * np.sin(x) + rng.normal(size=(n_time, 16, 16))
    v[:, :6, :6] = np.nan
    return xr.Dataset({"sst": (("time", "lat", "lon"), v.astype(np.float32), {"units": "K"})},
                      coords={"time": np.arange(n_time), "lat": ("lat", lat, {"units": "degrees_north"}),
                              "lon": ("lon", lon, {"units": "degrees_east"})})


def grid_data(n_time=8, size=8, seed=0) -> xr.Dataset:
    """A smooth periodic 2-D field u(time, y, x) drifting in time."""
    rng = np.random.default_rng(seed)
    k = 2 * np.pi * np.arange(size) / size
    phase = np.cumsum(rng.normal(0.3, 0.1, n_time))
    u = np.sin(k[None, None, :] + phase[:, None, None]) * np.cos(k[None, :, None]) + 0.1 * rng.normal(size=(n_time, size, size))
    return xr.Dataset({"u": (("time", "y", "x"), u.astype(np.float32), {"units": "m s-1"})},
                      coords={"time": np.arange(n_time), "y": np.arange(size), "x": np.arange(size)})


# ----------------------------------------------------------------------------- recipes
def recipe_ensemble() -> dict[str, np.ndarray]:
    """EnsembleEmulator (SEEDS), PeriodicConv1d backbone, emulation mode."""
    from sciffusion.emulators import EnsembleEmulator

    torch.manual_seed(GLOBAL_SEED)
    with torch_threads(1):
        ds = seeds_data()
        emu = EnsembleEmulator.fit(ds, net={"kwargs": {"width": 8, "n_blocks": 1, "groups": 4}}, steps=4,
                                   batch_size=16, warmup_steps=2, seed=3)
        out = emu.generate(ds[["x"]].isel(init_time=[0, 1], member=[0, 1]), 3, steps=3, seed=1)
    return {"output": _f32(out["x"].values), **fingerprint(emu.denoiser)}


def recipe_ensemble_eof() -> dict[str, np.ndarray]:
    """EnsembleEmulator in post-processing mode with the EOFMLP latent backbone (seeded randomised SVD)."""
    from sciffusion.emulators import EnsembleEmulator

    torch.manual_seed(GLOBAL_SEED)
    with torch_threads(1):
        ds = seeds_data(seed=1)
        net = {"name": "EOFMLP", "kwargs": {"rank": 2, "cond_rank": 4, "width": 16, "depth": 2}}
        emu = EnsembleEmulator.fit(ds, net=net, mode="post-processing", steps=4, batch_size=16, warmup_steps=2, seed=5)
        out = emu.generate(ds[["x"]].isel(init_time=[0, 1], member=[0, 1]), 3, steps=3, seed=2)
    return {"output": _f32(out["x"].values), **fingerprint(emu.denoiser)}


def recipe_rollout() -> dict[str, np.ndarray]:
    """Rollout, trained through a checkpoint directory, then a 2-member 3-step rollout."""
    from sciffusion.emulators import Rollout

    torch.manual_seed(GLOBAL_SEED)
    with torch_threads(1), tempfile.TemporaryDirectory() as tmp:
        ds = ar1_data()
        model = Rollout.fit(ds, net={"name": "PeriodicConv1d", "kwargs": {"width": 8, "n_blocks": 1}}, steps=4,
                            batch_size=8, warmup_steps=2, seed=2, out_dir=Path(tmp) / "run", checkpoint_every=2)
        out = model.rollout(ds.isel(run=0, time=0), 3, n_members=2, steps=3, seed=1, progress=False)
    return {"output": _f32(out["x"].values), **fingerprint(model.denoiser)}


def recipe_dyffusion() -> dict[str, np.ndarray]:
    """DYffusion (dropout in training and at inference), horizon 2, then a 2-member 4-step rollout."""
    from sciffusion.emulators import DYffusion

    torch.manual_seed(GLOBAL_SEED)
    with torch_threads(1):
        ds = ar1_data(seed=1)
        model = DYffusion.fit(ds, net={"name": "PeriodicConv1d", "kwargs": {"width": 8, "n_blocks": 1}}, horizon=2,
                              steps=3, batch_size=8, warmup_steps=1, seed=4)
        out = model.rollout(ds.isel(run=0, time=0), 4, n_members=2, seed=3, progress=False)
    return {"output": _f32(out["x"].values), **fingerprint(model.interpolator, model.forecaster)}


def recipe_downscaler() -> dict[str, np.ndarray]:
    """Downscaler x4 on a field with land (NaN stays NaN), 2 members of 2 coarse times."""
    from sciffusion.emulators import Downscaler, coarsen

    torch.manual_seed(GLOBAL_SEED)
    with torch_threads(1):
        fine = sst_data()
        model = Downscaler.fit(fine, factor=4, steps=2, batch_size=4, warmup_steps=1, seed=6,
                               net={"kwargs": {"channels": [8, 8], "groups": 4}})
        coarse = coarsen(sst_data(n_time=2, seed=1), 4, grid_dims=["lat", "lon"])
        out = model.downscale(coarse, 2, steps=2, seed=1)
    return {"output": _f32(out["sst"].values), **fingerprint(model.denoiser)}


def recipe_config() -> dict[str, np.ndarray]:
    """The config path (``sciffusion train`` / ``sample``): train_from_config, then sample_from_checkpoint."""
    from sciffusion.checkpoint import resolve
    from sciffusion.recipes import sample_from_checkpoint, train_from_config

    torch.manual_seed(GLOBAL_SEED)
    with torch_threads(1), tempfile.TemporaryDirectory() as tmp:
        ds = grid_data()
        cfg = {"data": {"variables": ["u"], "grid_dims": ["y", "x"], "along": "time", "offset": 1},
               "model": {"net": "UNet2d", "kwargs": {"channels": [8], "blocks_per_level": 1, "padding": "circular",
                                                     "attention_levels": [], "groups": 4}},
               "training": {"out_dir": str(Path(tmp) / "run"), "steps": 3, "batch_size": 4, "checkpoint_every": 3,
                            "seed": 7}}
        trainer = train_from_config(cfg, ds=ds, progress=False)
        assert resolve(Path(tmp) / "run").is_dir()
        out = sample_from_checkpoint(Path(tmp) / "run", ds, Path(tmp) / "ens.zarr", n_members=2, cases=[0, 1], steps=2,
                                     seed=1, progress=False)
        values = _f32(out["u"].values)
    return {"output": values, **fingerprint(trainer.ema)}


RECIPES = {"ensemble": recipe_ensemble, "ensemble_eof": recipe_ensemble_eof, "rollout": recipe_rollout,
           "dyffusion": recipe_dyffusion, "downscaler": recipe_downscaler, "config": recipe_config}


def main() -> None:
    arrays = {}
    for name, recipe in RECIPES.items():
        for key, value in recipe().items():
            arrays[f"{name}/{key}"] = value
    np.savez_compressed(REFERENCE, **arrays)
    print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size} bytes): " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
