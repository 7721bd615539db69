"""Long rollouts of 2-D Kolmogorov flow (32 x 32 on CPU): autoregressive EDM and DYffusion against the solver.

Physics: KolmogorovFlow(n=32, Re=100, drag=0.1, k_f=4), ETDRK4 at dt = 0.01; the emulators step
dt = 0.5 (50 solver steps). Four trajectories of 10,000 emulator steps (5,000 time units) after a
50-unit spin-up, from different random initial states: run A is the climate reference, run B the
internal-variability floor (same length, other initial state), runs C and D the training data
(one-step pairs; DYffusion windows of h = 4 steps). Each model trains for ``--train-steps``
steps on one thread.

Reported, per model, next to the floor (run B against run A):
- a rollout of 10,000 steps (100x DYffusion's training window, 10,000x the AR training step)
  from run A's first state: finite?, energy mean/std over the run (on the attractor?);
- time-mean and variance bias maps against run A, RMS over the grid, and the energy-spectrum error
  (mean |log10 E(k) / E_A(k)| over k = 1..10);
- ensemble CRPS and spread-skill ratio against lead for the first 50 steps (8 initial states from
  run A, 8 members each);
- cost per simulated step (dt = 0.5) of the emulator (1 member, and per member in a batch of 8)
  and of the solver, best of 3 repeats in the same process and thread count.

    python benchmarks/rollout_kolmogorov.py                      # ~25 min per model on 1 core
    python benchmarks/rollout_kolmogorov.py --model ar           # one model (results are merged)
    python benchmarks/rollout_kolmogorov.py --quick              # smoke run

The recorded results came from (run side by side, sharing the physics cache):

    python benchmarks/rollout_kolmogorov.py --model ar --train-steps 1200 --cache /tmp/k.npy
    python benchmarks/rollout_kolmogorov.py --model dyffusion --train-steps 800 --cache /tmp/k.npy
    python benchmarks/rollout_kolmogorov.py --model dyffusion --pattern --train-steps 600 --cache /tmp/k.npy
    python benchmarks/rollout_kolmogorov.py --system shallow_water --sw-train-steps 300 --members 8
    python benchmarks/rollout_kolmogorov.py --model ar --pattern --train-steps 1200 --cache /tmp/k.npy \
        --sampler dpmpp2m 12 --start centred          # -> "ar+pattern+dpmpp2m12c"

Training on a GPU, scoring here (the "+gpu32-64-128" rows; see benchmarks/gpu_session.sh):

    python benchmarks/rollout_kolmogorov.py --model ar --cache /tmp/k.npy --pack-train-data .gpu/rollout_train.npy
    # on the GPU machine:
    python benchmarks/rollout_kolmogorov.py --model ar --pattern --train-data .gpu/rollout_train.npy --train-only \
        --device cuda --net-channels 32 64 128 --batch-size 128 --ema 0.999 --train-steps 1000000 \
        --train-seconds 400 --save-model ar_big
    # back here:
    python benchmarks/rollout_kolmogorov.py --model ar --pattern --cache /tmp/k.npy --load-model ar_big --tag +gpu32-64-128

Writes benchmarks/results/rollout_kolmogorov.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from sciffusion.emulators import DYffusion, Rollout
from sciffusion.metrics import crps_ensemble, spread_skill_ratio
from sciffusion.systems import KolmogorovFlow

RESULTS = Path(__file__).parent / "results" / "rollout_kolmogorov.json"
SETUP = {"n": 32, "reynolds": 100.0, "drag": 0.1, "k_forcing": 4, "solver_dt": 0.01, "every": 50, "spinup_steps": 5000,
         "seed": 2024}


def physics(n_steps: int, cache: Path | None) -> np.ndarray:
    """Four trajectories ``(4, n_steps + 1, 32, 32)`` every 0.5 time units (cached as .npy)."""
    if cache is not None and cache.exists():
        traj = np.load(cache)
        if traj.shape[1] >= n_steps + 1:
            return traj[:, : n_steps + 1]
    kf = KolmogorovFlow(n=SETUP["n"], reynolds=SETUP["reynolds"], drag=SETUP["drag"], k_forcing=SETUP["k_forcing"])
    x = kf.step(kf.initial_state(4, torch.Generator().manual_seed(SETUP["seed"])), SETUP["spinup_steps"])
    traj = np.empty((4, n_steps + 1, SETUP["n"], SETUP["n"]), np.float32)
    traj[:, 0] = x.numpy()
    for k in range(1, n_steps + 1):
        x = kf.step(x, SETUP["every"])
        traj[:, k] = x.numpy()
    if cache is not None:
        np.save(cache, traj)
    return traj


def as_dataset(traj: np.ndarray) -> xr.Dataset:
    kf = KolmogorovFlow(n=SETUP["n"])
    c = kf.coords()
    return xr.Dataset({"vorticity": (("run", "time", "y", "x"), traj, kf.variables()["vorticity"].attrs)},
                      coords={"time": np.arange(traj.shape[1]) * 0.5, "y": c["y"].values, "x": c["x"].values})


def climate(x: np.ndarray, kf: KolmogorovFlow) -> dict:
    """Time-mean and variance maps, energy series, mean spectrum of states ``(T, 32, 32)``."""
    t = torch.as_tensor(x, dtype=torch.float64)
    energy = kf.energy_budget(t)["energy"].numpy()
    _, spec = kf.energy_spectrum(t[:: max(1, len(t) // 1000)])
    return {"mean": x.mean(0), "var": x.var(0), "energy": energy, "spectrum": spec}


def bias(c: dict, ref: dict) -> dict:
    k = slice(1, 11)
    return {"mean_bias_rms": float(np.sqrt(((c["mean"] - ref["mean"]) ** 2).mean())),
            "var_bias_rms": float(np.sqrt(((c["var"] - ref["var"]) ** 2).mean())),
            "spectrum_error": float(np.abs(np.log10(c["spectrum"][k] / ref["spectrum"][k])).mean()),
            "energy_mean": float(c["energy"].mean()), "energy_std": float(c["energy"].std())}


def pattern() -> xr.Dataset:
    """The forcing pattern cos(k_f y) as a static field (the circular U-Net cannot tell positions otherwise)."""
    y = KolmogorovFlow(n=SETUP["n"]).coords()["y"].values
    return xr.Dataset({"forcing_pattern": (("y", "x"), np.repeat(np.cos(SETUP["k_forcing"] * y)[:, None], SETUP["n"], 1))})


def ar_sampler(args) -> dict:
    """The autoregressive model's sampler from ``--sampler METHOD STEPS`` and ``--start`` (default Heun 6, noise)."""
    return {"method": args.sampler[0], "steps": int(args.sampler[1]), "start": args.start}


def ar_suffix(args) -> str:
    """Result-key suffix for a non-default autoregressive sampler, e.g. ``+dpmpp2m12c``."""
    if args.model == "dyffusion" or (tuple(args.sampler) == ("heun", "6") and args.start == "noise"):
        return ""
    return f"+{args.sampler[0]}{args.sampler[1]}{'c' if args.start == 'centred' else ''}"


def train(kind: str, ds: xr.Dataset, steps: int, log, forcings=None, sampler: dict | None = None,
          opts: dict | None = None) -> tuple[object, float, int]:
    """Train one emulator; ``opts``: batch_size, lr, ema_decay, device, max_seconds (CPU defaults 32, 1e-3, 0.995)."""
    t0 = time.perf_counter()
    if forcings:
        ds = ds.merge(pattern())
    kw = {"batch_size": 32, "lr": 1e-3, "ema_decay": 0.995, "warmup_steps": 100, "seed": 0, **(opts or {})}
    if kind == "ar":
        model = Rollout.fit(ds, grid_dims=["y", "x"], steps=steps, forcings=forcings, **kw)
        model.sampler.update({"steps": 6, "sigma_max": 10.0, **(sampler or {})})
        loss, done = model.history[-1]["loss"], model.history[-1]["step"]
    else:
        model = DYffusion.fit(ds, grid_dims=["y", "x"], horizon=4, steps=steps, dropout=0.15, forcings=forcings, **kw)
        loss, done = float(model.forecaster.losses[-50:].mean()), len(model.forecaster.losses)
        if len(model.interpolator.losses) != done:
            done = [len(model.interpolator.losses), done]
    sec = time.perf_counter() - t0
    log(f"{kind}: trained {done} steps in {sec:.0f} s (final loss {loss:.4f})")
    return model, sec, done


def train_options(args) -> dict:
    opts = {"batch_size": args.batch_size, "lr": args.lr, "ema_decay": args.ema, "device": args.device}
    if args.net_channels:
        opts["net"] = {"name": "UNet2d", "kwargs": {"channels": args.net_channels}}
    if args.train_seconds:
        opts["max_seconds"] = args.train_seconds
    return opts


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"


def pack_training_runs(traj: np.ndarray, path: Path) -> None:
    """Runs C and D (the training data) as their Fourier modes |k_x|, |k_y| <= n/3 (the solver's
    dealiased modes, all the state has): ~45% of the bytes, reconstructed to float32 round-off."""
    f = np.fft.rfft2(traj[2:4].astype(np.float64))
    keep = _kept_modes(traj.shape[-1])
    np.save(path, f[..., keep].astype(np.complex64))


def unpack_training_runs(path: Path) -> np.ndarray:
    """``(4, T, n, n)`` with runs C, D from :func:`pack_training_runs` in slots 2, 3 (0, 1 are NaN)."""
    c = np.load(path)
    n = SETUP["n"]
    f = np.zeros((*c.shape[:2], n, n // 2 + 1), np.complex128)
    f[..., _kept_modes(n)] = c
    traj = np.full((4, c.shape[1], n, n), np.nan, np.float32)
    traj[2:4] = np.fft.irfft2(f, s=(n, n))
    return traj


def _kept_modes(n: int) -> np.ndarray:
    k = np.abs(np.fft.fftfreq(n, 1 / n))[:, None]
    return (k <= n // 3) & (np.arange(n // 2 + 1)[None, :] <= n // 3)


def init_state(traj: np.ndarray, run: int, k: int) -> xr.Dataset:
    return as_dataset(traj[run : run + 1, k : k + 1]).isel(run=0, time=0)


def ensemble_skill(model, traj: np.ndarray, n_init: int, members: int, leads: int, forcings=None) -> dict:
    crps, ssr = [], []
    starts = np.linspace(0, traj.shape[1] - leads - 1, n_init).astype(int)
    fc, ob = [], []
    for i, k in enumerate(starts):
        out = model.rollout(init_state(traj, 0, int(k)), leads, n_members=members, seed=i, progress=False,
                            forcings=forcings)
        fc.append(out.vorticity.values[:, 1:])  # (M, L, y, x)
        ob.append(traj[0, k + 1 : k + leads + 1])
    fc = xr.DataArray(np.stack(fc), dims=("init", "member", "lead", "y", "x"))
    ob = xr.DataArray(np.stack(ob), dims=("init", "lead", "y", "x"))
    crps = crps_ensemble(fc, ob, member_dim="member", fair=True, reduce_dims=["init", "y", "x"]).values
    ssr = spread_skill_ratio(fc, ob, member_dim="member", reduce_dims=["init", "y", "x"]).values
    return {"lead_steps": list(range(1, leads + 1)), "crps": crps.tolist(), "spread_skill": ssr.tolist()}


def cost(model, traj, repeats: int = 3, n: int = 20, forcings=None) -> dict:
    kf = KolmogorovFlow(n=SETUP["n"])
    x = torch.as_tensor(traj[0, 0:1], dtype=torch.float64)
    solver = min(_timed(lambda: kf.step(x, SETUP["every"] * n)) for _ in range(repeats)) / n
    one = min(_timed(lambda: model.rollout(init_state(traj, 0, 0), n, progress=False, forcings=forcings))
              for _ in range(repeats)) / n
    eight = min(_timed(lambda: model.rollout(init_state(traj, 0, 0), n, n_members=8, progress=False, forcings=forcings))
                for _ in range(repeats)) / n / 8
    return {"solver_s_per_step": solver, "emulator_s_per_step": one, "emulator_s_per_step_per_member_batch8": eight}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_model(kind: str, traj: np.ndarray, args, log) -> dict:
    kf = KolmogorovFlow(n=SETUP["n"])
    n_train = min(traj.shape[1], args.train_times)
    names = ["forcing_pattern"] if args.pattern else None
    forcings = pattern() if args.pattern else None
    if args.load_model:
        model = (Rollout if kind == "ar" else DYffusion).load(args.load_model)
        if kind == "ar":
            model.sampler.update({"steps": 6, "sigma_max": 10.0, **ar_sampler(args)})
        meta = json.loads((Path(args.load_model) / "training.json").read_text())
        train_s, done = meta["train_s"], meta["train_steps"]
        log(f"{kind}: loaded {args.load_model} ({done} training steps, {train_s:.0f} s on {meta.get('device_name')})")
    else:
        model, train_s, done = train(kind, as_dataset(traj[2:4, :n_train]), args.train_steps, log, names,
                                     ar_sampler(args), train_options(args))
        meta = {"train_steps": done, "train_s": train_s, **train_options(args), "device_name": device_name(args.device)}
        if args.save_model:
            model.save(args.save_model)
            (Path(args.save_model) / "training.json").write_text(json.dumps(meta, indent=1))
            log(f"{kind}: saved to {args.save_model}")
        if args.train_only:
            return meta
    t0 = time.perf_counter()
    res = {**meta, "train_steps_requested": args.train_steps}
    try:
        out = model.rollout(init_state(traj, 0, 0), args.steps, n_members=1, seed=0, progress=False, forcings=forcings,
                            out=Path(args.store) / f"{kind}{'_pattern' if args.pattern else ''}.zarr", chunk_steps=500,
                            mode="w")
        x = out.vorticity.values[0]
    except FloatingPointError as exc:
        x, res["diverged"] = np.full(1, np.nan), str(exc)
    roll_s = time.perf_counter() - t0
    finite = bool(np.isfinite(x).all())
    res.update(rollout_s=roll_s, finite=finite)
    res.update(bias(climate(x, kf), climate(traj[0], kf)) if finite else {})
    res["skill"] = ensemble_skill(model, traj, args.n_init, args.members, args.leads, forcings)
    res["cost"] = cost(model, traj, forcings=forcings)
    log(f"{kind}: rollout of {args.steps} steps in {roll_s:.0f} s, finite={finite}")
    return res


def table(r: dict) -> str:
    rows = [("", "mean bias", "var bias", "spec err", "E mean", "E std", "CRPS@1", "CRPS@10", "CRPS@50", "SSR@10",
             "SSR@50", "s/step")]
    fl = r.get("floor", {})
    if fl:
        rows.append(("physics floor (B vs A)", *[f"{fl[k]:.3f}" for k in ("mean_bias_rms", "var_bias_rms", "spectrum_error",
                                                                           "energy_mean", "energy_std")],
                     "", "", "", "", "", f"{r.get('solver_s_per_step', float('nan')):.4f}"))
    known = ("ar", "dyffusion", "ar+pattern", "dyffusion+pattern")
    extra = sorted(k for k in r if k.startswith(("ar+", "dyffusion+")) and k not in known)
    for kind in (*known, *extra):
        m = r.get(kind)
        if not m:
            continue
        sk = m["skill"]

        def at(key, lead):
            return sk[key][min(lead, len(sk[key])) - 1]

        rows.append((kind, *[f"{m.get(k, float('nan')):.3f}" for k in ("mean_bias_rms", "var_bias_rms", "spectrum_error",
                                                                          "energy_mean", "energy_std")],
                     *[f"{at('crps', k):.3f}" for k in (1, 10, 50)], *[f"{at('spread_skill', k):.2f}" for k in (10, 50)],
                     f"{m['cost']['emulator_s_per_step']:.4f}"))
    w = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(row)) for row in rows)


def shallow_water(args, log) -> dict:
    """The spherical variant: Galewsky jets with random bump longitudes (32 x 64, every 6 h), SFNO backbone.

    The jet is not statistically stationary (it rolls up, then the hyperdiffusion slowly damps it),
    so there is no climate to compare against: we report skill against a held-out truth over the
    first ``sw_leads`` steps, whether a rollout of ``sw_steps`` steps stays finite, mass drift, cost.
    """
    from sciffusion.systems import ShallowWater

    sw = ShallowWater(nlat=32, nlon=64, dt_seconds=600.0)
    n_out = max(args.sw_leads, 40)
    x0 = sw.initial_state(args.sw_runs, torch.Generator().manual_seed(7))  # bumps at random longitudes
    traj = sw.integrate(x0, n_out, 36)  # (run, time, ...) every 6 h
    fields = sw.fields(traj.flatten(0, 1))
    c = sw.coords()
    runs = xr.Dataset({v: (("run", "time", "lat", "lon"), fields[v].reshape(args.sw_runs, n_out + 1, 32, 64).float().numpy())
                       for v in ("h", "vorticity")},
                      coords={"time": np.arange(n_out + 1) * 6.0, "lat": c["lat"].values, "lon": c["lon"].values})
    train, test = runs.isel(run=slice(1, None)), runs.isel(run=0)  # independent runs; run 0 held out
    net = {"name": "SFNO", "kwargs": {"width": 32, "n_layers": 4}}
    out = {"grid": [32, 64], "dt_hours": 6.0, "runs": args.sw_runs}
    for kind in ("ar", "dyffusion"):
        t0 = time.perf_counter()
        if kind == "ar":
            model = Rollout.fit(train, grid_dims=["lat", "lon"], net=net, steps=args.sw_train_steps, batch_size=16, lr=1e-3)
            model.sampler.update(steps=6, sigma_max=10.0)
        else:
            model = DYffusion.fit(train, grid_dims=["lat", "lon"], net=net, horizon=4, steps=args.sw_train_steps,
                                  batch_size=16, lr=1e-3)
        train_s = time.perf_counter() - t0
        init = test.isel(time=0)
        fc = model.rollout(init, args.sw_leads, n_members=args.members, seed=0, progress=False)
        obs = test.isel(time=slice(1, args.sw_leads + 1))
        res = {"train_s": train_s}
        for v in ("h", "vorticity"):
            f = fc[v].isel(time=slice(1, None)).assign_coords(time=obs.time)
            res[f"crps_{v}"] = crps_ensemble(f, obs[v], member_dim="member", fair=True, reduce_dims=["lat", "lon"]).values.tolist()
            res[f"rmse_{v}"] = np.sqrt(((f.mean("member") - obs[v]) ** 2).mean(["lat", "lon"])).values.tolist()
            res[f"rmse_persistence_{v}"] = np.sqrt(((init[v] - obs[v]) ** 2).mean(["lat", "lon"])).values.tolist()
        try:
            long = model.rollout(init, args.sw_steps, n_members=1, seed=0, progress=False)
            w = np.cos(np.deg2rad(long.lat.values))[:, None]
            mass = (long.h.values[0] * w).sum((-2, -1))
            res.update(finite=True, mass_drift=float(mass[-1] / mass[0] - 1))
        except FloatingPointError as exc:
            res.update(finite=False, diverged=str(exc))
        x = torch.as_tensor(sw.initial_state(1, torch.Generator().manual_seed(0)))
        solver = min(_timed(lambda: sw.step(x, 36 * 5)) for _ in range(3)) / 5
        emu = min(_timed(lambda: model.rollout(init, 5, progress=False)) for _ in range(3)) / 5
        res.update(solver_s_per_step=solver, emulator_s_per_step=emu)
        log(f"shallow water {kind}: trained in {train_s:.0f} s; RMSE h at lead 1/{args.sw_leads}: "
            f"{res['rmse_h'][0]:.1f}/{res['rmse_h'][-1]:.1f} m (persistence {res['rmse_persistence_h'][0]:.1f}/"
            f"{res['rmse_persistence_h'][-1]:.1f}); {args.sw_steps}-step rollout finite={res['finite']}")
        out[kind] = res
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["ar", "dyffusion", "both"], default="both")
    p.add_argument("--steps", type=int, default=10_000, help="rollout length in emulator steps (dt = 0.5)")
    p.add_argument("--train-steps", type=int, default=1000)
    p.add_argument("--train-times", type=int, default=10_001, help="times per training trajectory")
    p.add_argument("--n-init", type=int, default=8)
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--leads", type=int, default=50)
    p.add_argument("--cache", default=str(Path(__file__).resolve().parents[1] / "runs" / "rollout_kolmogorov_physics.npy"))
    p.add_argument("--store", default=str(Path(__file__).resolve().parents[1] / "runs" / "rollout_kolmogorov"))
    p.add_argument("--system", choices=["kolmogorov", "shallow_water"], default="kolmogorov")
    p.add_argument("--sw-runs", type=int, default=6, help="shallow water: Galewsky runs (1 held out)")
    p.add_argument("--sw-train-steps", type=int, default=600)
    p.add_argument("--sw-leads", type=int, default=20, help="shallow water: scored leads (6 h each)")
    p.add_argument("--sw-steps", type=int, default=400, help="shallow water: length of the stability rollout")
    p.add_argument("--pattern", action="store_true",
                   help="condition on the forcing pattern cos(4y) as a static field (results as '<model>+pattern')")
    p.add_argument("--sampler", nargs=2, default=["heun", "6"], metavar=("METHOD", "STEPS"),
                   help="autoregressive model's sampler from sigma_max = 10 (default heun 6)")
    p.add_argument("--start", choices=["noise", "centred"], default="noise",
                   help="starting point of each step's sampler (centred: + D(s z, s), one more network call)")
    p.add_argument("--device", default="cpu", help="training device (the rollouts and costs run on the CPU)")
    p.add_argument("--net-channels", type=int, nargs="+", help="U-Net channels per level (default 16 32)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--train-seconds", type=float, help="stop training after this much wall time (before --train-steps)")
    p.add_argument("--save-model", help="write the trained model (and training.json) to this directory")
    p.add_argument("--load-model", help="skip training: load a model written by --save-model")
    p.add_argument("--train-only", action="store_true", help="train (and --save-model), score nothing")
    p.add_argument("--pack-train-data", help="write the training runs, Fourier-compressed, to this .npy and exit")
    p.add_argument("--train-data", help="train on runs from --pack-train-data instead of --cache (with --train-only)")
    p.add_argument("--tag", default="", help="suffix of the result key, e.g. '+gpu' for a model trained elsewhere")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.train_data and not args.train_only:
        p.error("--train-data holds only the training runs: use it with --train-only")
    if (args.load_model or args.save_model) and args.model == "both":
        p.error("--load-model/--save-model take one model: pass --model ar or --model dyffusion")
    if args.quick:
        args.steps, args.train_steps, args.n_init, args.members, args.leads = 40, 20, 2, 2, 5
        args.sw_runs, args.sw_train_steps, args.sw_leads, args.sw_steps = 3, 5, 4, 8
    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.system == "shallow_water":
        res = shallow_water(args, log)
        if not args.quick:
            latest = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
            latest["shallow_water"] = res
            RESULTS.write_text(json.dumps(latest, indent=1))
        return
    t0 = time.perf_counter()
    if args.train_data:
        traj = unpack_training_runs(Path(args.train_data))
        log(f"training runs {args.train_data}: {traj.shape[1]} times, unpacked in {time.perf_counter() - t0:.0f} s")
        for kind in (["ar", "dyffusion"] if args.model == "both" else [args.model]):
            print(json.dumps(run_model(kind, traj, args, log)))
        return
    traj = physics(args.steps, Path(args.cache) if args.cache else None)
    log(f"physics: 4 x {args.steps} steps ready in {time.perf_counter() - t0:.0f} s")
    if args.pack_train_data:
        pack_training_runs(traj, Path(args.pack_train_data))
        log(f"wrote {args.pack_train_data}")
        return
    if args.train_only:
        for kind in (["ar", "dyffusion"] if args.model == "both" else [args.model]):
            print(json.dumps(run_model(kind, traj, args, log)))
        return
    kf = KolmogorovFlow(n=SETUP["n"])
    out = json.loads(RESULTS.read_text()) if RESULTS.exists() and not args.quick else {}
    out.update(setup={**SETUP, "emulator_dt": 0.5, "rollout_steps": args.steps, "threads": 1},
               floor=bias(climate(traj[1], kf), climate(traj[0], kf)))
    for kind in (["ar", "dyffusion"] if args.model == "both" else [args.model]):
        key = kind + ("+pattern" if args.pattern else "") + (ar_suffix(args) if kind == "ar" else "") + args.tag
        out[key] = run_model(kind, traj, args, log)
        out["solver_s_per_step"] = out[key]["cost"]["solver_s_per_step"]
        if not args.quick:
            latest = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
            latest.update({k: v for k, v in out.items() if k in (key, "setup", "floor", "solver_s_per_step")})
            RESULTS.write_text(json.dumps(latest, indent=1))
            out = latest
    print(table(out))


if __name__ == "__main__":
    main()
