"""Downscaling Kolmogorov-flow vorticity by a factor 4: 32 x 32 from 8 x 8 block means (CPU default) or 64 x 64 from 16 x 16 (``--size 64``, GPU).

Data: KolmogorovFlow(n=2 * size, Re=100, drag=0.1, dt=0.01) snapshots (independent trajectories
after a spin-up of 20 time units, one snapshot per time unit), block-averaged by 2 to the
size x size "fine" truth (so the truth's spectrum is resolved up to its Nyquist wavenumber instead
of ending at the 2/3 de-aliasing cut of a size x size run) and again by 4 to the coarse input.
The default grid is 32 x 32 rather than 64 x 64 to keep CPU training near 20 minutes on one
thread; ``--size 64`` is the GPU setting (n=128 is stable at dt=0.01: grid CFL
``max|u| dt / dx`` about 0.7; should a set of trajectories still blow up, it is re-simulated with
dt halved and the step counts doubled, the same physical times, and the dt used is recorded).

Compared on held-out snapshots (other trajectories):

* bicubic interpolation of the coarse field (periodic);
* a deterministic U-Net regression of the same size (same backbone, data, optimiser, steps,
  EMA and precision: bf16 autocast on CUDA like the diffusion Trainer), trained with the MSE on
  the same residual target;
* the :class:`~sciffusion.emulators.Downscaler` ensemble (DDIM steps/eta - and with ``--s-noise``
  EDM-stochastic steps/s_noise - calibrated on a validation set for a spread-skill ratio of 1, or
  with ``--criterion ssr+spectrum`` for |ssr - 1| + |high-k power error|, or ``ssr|spectrum`` for
  spread-skill closest to 1 among the settings within ``--spectrum-tol`` on the high-k power; Heun offered to
  the same choice; ``--choose-from`` reapplies a criterion to an earlier run's validation table).

Scores, pooled over all points: CRPS (a deterministic field is a one-member ensemble, CRPS = MAE),
RMSE, spread-skill ratio, rank-histogram flatness (KS distance from uniform, 0 = flat), and the
high-wavenumber power error: total radial power in the top half of wavenumbers (k from N/4 to N/2
cycles per domain) of the forecast fields relative to the truth's, ``P_model / P_truth - 1``;
plus the ensemble variance against DDIM steps and eta. Targets (issue 7): diffusion CRPS below
both baselines and the high-wavenumber power within 10% of the truth.

    python benchmarks/downscale_kolmogorov.py               # ~35 min on 1 core (20 of them training)
    python benchmarks/downscale_kolmogorov.py --quick       # smoke run, ~1 min
    # 64 x 64 from 16 x 16 on one GPU (a few minutes on an H100), JSON to $OUT:
    python benchmarks/downscale_kolmogorov.py --size 64 --device cuda --channels 32 64 128 \\
        --batch-size 64 --steps 6000 --n-train 200 --time-budget 480 --out $OUT/downscale_kolmogorov_64.json

``--time-budget S`` measures seconds per step of both models (short probe runs, ~60 steps each)
and cuts ``--steps`` so that the two trainings together take at most 60% of S (and end by 80% of
S counted from the start); the steps used are in the JSON (``setup.steps``, ``budget``).

Writes benchmarks/results/downscale_kolmogorov.json (not with ``--quick``), or ``--out``. The JSON
is rewritten after every stage; a stage that fails is recorded under ``errors`` (with its
traceback), the later stages that do not need it still run, and the script exits with status 1.
Nothing is written as netCDF unless ``--cache`` is given.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

import sciffusion.metrics as sm
from sciffusion.diffusion.accel import resolve as resolve_speed
from sciffusion.emulators import Downscaler, coarsen, upsample
from sciffusion.emulators.downscale_data import stack
from sciffusion.emulators.calibrate import choose_setting
from sciffusion.emulators.downscaler import default_net
from sciffusion.nets import build_net
from sciffusion.systems import KolmogorovFlow

RESULTS = Path(__file__).parent / "results" / "downscale_kolmogorov.json"
FACTOR = 4
NET = {"kwargs": {"channels": [16, 32, 64], "blocks_per_level": 1}}
DT = 0.01  # time step of the simulation; 100 steps = 1 time unit


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def snapshots(n_traj: int, per_traj: int, seed: int, size: int = 32, device="cpu", info: dict | None = None) -> xr.Dataset:
    """Vorticity ``(time, y, x)`` on the size x size truth grid: ``n_traj`` trajectories x ``per_traj`` snapshots.

    Simulated on a ``2 * size`` grid (spin-up 20 time units, one snapshot per time unit) and block-averaged
    by 2. A run that goes non-finite is redone with dt halved (same physical times); ``info["dt"]`` gets the dt.
    """
    n, dt = 2 * size, DT
    while True:
        kf = KolmogorovFlow(n=n, reynolds=100.0, drag=0.1, dt=dt, device=device)
        per_unit = int(round(1.0 / dt))
        x = kf.step(kf.initial_state(n_traj, torch.Generator().manual_seed(seed)), 20 * per_unit)
        out = []
        for _ in range(per_traj):
            x = kf.step(x, per_unit)
            out.append(x.cpu().numpy())
        w = np.stack(out, 1).reshape(-1, n, n)
        if np.isfinite(w).all() and np.abs(w).max() < 1e3:
            break
        if dt < DT / 8:
            raise FloatingPointError(f"KolmogorovFlow(n={n}) blew up even at dt={dt}")
        print(f"KolmogorovFlow(n={n}) blew up at dt={dt} (seed {seed}); redoing at dt={dt / 2}", flush=True)
        dt /= 2
    if info is not None:
        info["dt"] = dt if info.get("dt") is None else min(info["dt"], dt)
    coords = kf.coords()
    ds = xr.Dataset({"vorticity": (("time", "y", "x"), w.astype(np.float32), kf.variables()["vorticity"].attrs)},
                    coords={d: (d, c.values, c.attrs) for d, c in coords.items()})
    return coarsen(ds, 2)


def train_regression(model: Downscaler, fine: xr.Dataset, steps: int, batch_size: int, lr: float, ema_decay: float,
                     seed: int = 0, net: dict | None = None, device="cpu", timing: dict | None = None,
                     log_every: int = 0) -> torch.nn.Module:
    """The deterministic baseline: the Downscaler's backbone (same size) regressing the residual with the MSE.

    On CUDA the forward pass runs under bf16 autocast, as the diffusion Trainer's ("auto" precision).
    ``timing`` (a dict) gets ``sec_per_step`` measured after the first 10 steps.
    """
    device = torch.device(device)
    c = model.coder
    f = stack(fine, c.variables, c.sample_dim, c.grid_dims)
    up = c.upsample(stack(coarsen(fine, FACTOR), c.variables, c.sample_dim, c.grid_dims))
    x, _ = c.target(f, up)
    cond = c.condition(up)
    x, cond = x.to(device), cond.to(device)
    spec = default_net(c, NET if net is None else net)
    spec["kwargs"] = {**spec["kwargs"], "in_channels": c.cond_channels, "cond_channels": 0, "out_channels": c.channels}
    torch.manual_seed(seed)
    net = build_net(spec).to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    bf16 = resolve_speed("auto", False, False, device)["precision"] == "bf16"
    g = torch.Generator().manual_seed(seed)  # CPU generator: CPU indices, moved to the data's device
    zeros = torch.zeros(batch_size, device=device)
    warm = min(10, max(steps - 1, 0))
    t_warm = time.perf_counter()
    for step in range(steps):
        if step == warm:
            _sync(device)
            t_warm = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100)
        idx = torch.randint(0, len(x), (batch_size,), generator=g).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = net(cond[idx], zeros)
        loss = (pred.float() - x[idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), net.parameters()):
                e.lerp_(p, 1 - ema_decay)
        if log_every and (step + 1) % log_every == 0:
            print(f"  regression step {step + 1}/{steps}: loss {float(loss.detach()):.4f}", flush=True)
    _sync(device)
    if timing is not None:
        timing["sec_per_step"] = (time.perf_counter() - t_warm) / max(steps - warm, 1)
    return ema.eval()


@torch.no_grad()
def regress(net, model: Downscaler, coarse: xr.Dataset, device="cpu", batch_size: int = 64) -> np.ndarray:
    c = model.coder
    up = c.upsample(stack(coarse, c.variables, c.sample_dim, c.grid_dims))
    z = torch.cat([net(b.to(device), torch.zeros(len(b), device=device)).float().cpu()
                   for b in c.condition(up).split(batch_size)]).numpy()
    return c.decode(z[:, None], up)[:, :, 0]  # (N, 1, H, W)


def high_k_error(fields: xr.DataArray, truth: xr.DataArray) -> dict:
    """Radial power of ``fields`` (any leading dims) against the truth's, in the top half of wavenumbers."""
    n = truth.sizes["x"]
    ratio = sm.band_power_ratio(fields, truth, dims=("y", "x"))
    pf = sm.radial_spectrum(fields, dims=("y", "x"), reduce_dims="all")
    return {"high_k_power_ratio": ratio, "high_k_rel_error": ratio - 1.0, "spectrum": pf.values[: n // 2 + 1].tolist()}


def scores(ens: xr.DataArray, truth: xr.DataArray) -> dict:
    fc, obs = ens.astype(np.float64), truth.astype(np.float64)
    out = {"members": int(fc.sizes["member"]),
           "crps": float(sm.crps_ensemble(fc, obs, reduce_dims="all"))}
    out["rmse"] = float(sm.rmse(fc, obs, reduce_dims="all"))
    if fc.sizes["member"] > 1:
        comp = sm.spread_skill_ratio(fc, obs, reduce_dims="all", components=True)
        out.update(spread=float(comp["spread"]), ssr=float(comp["ratio"]))
        hist = sm.rank_histogram(fc, obs, reduce_dims="all").astype(float)
        out.update(rank_flatness=float(sm.flatness(hist)), rank_histogram=hist.values.tolist())
    else:  # a deterministic field: no spread; its rank histogram is all at the ends
        out.update(spread=0.0, ssr=0.0, rank_flatness=float("nan"))
    out.update(high_k_error(fc, obs))
    return out


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    return torch.device(name)


def _diffusion_sec_per_step(history: list[dict], batch_size: int, warm: int = 10) -> float:
    """Seconds per step after the first ``warm`` steps, from the Trainer's cumulative ``samples_per_s`` records."""
    elapsed = [r["step"] * batch_size / r["samples_per_s"] for r in history]  # seconds since fit() began, per step
    w = min(warm, len(history) - 1)
    if w < 1:
        return elapsed[-1] / max(history[-1]["step"], 1)
    return (elapsed[-1] - elapsed[w - 1]) / (history[-1]["step"] - history[w - 1]["step"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--size", type=int, choices=(32, 64), default=32,
                   help="fine grid (size x size, simulated at 2 * size and block-averaged by 2); coarse = size / 4")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to simulate, train and sample (auto: cuda when available)")
    p.add_argument("--steps", type=int, help="training steps of both models (default 2500; 20 with --quick)")
    p.add_argument("--channels", type=int, nargs="+", default=list(NET["kwargs"]["channels"]),
                   help="U-Net channels per level of both models (default 16 32 64)")
    p.add_argument("--batch-size", type=int, default=16, help="training batch of both models")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-train", type=int, help="training trajectories, 10 snapshots each (default 60; 4 with --quick)")
    p.add_argument("--n-val", type=int, help="validation trajectories (default 4; 2 with --quick)")
    p.add_argument("--val-per-traj", type=int, default=4,
                   help="validation snapshots per trajectory (default 4; 8 = the test set's snapshot times)")
    p.add_argument("--n-test", type=int, help="test trajectories, 8 snapshots each (default 8; 2 with --quick)")
    p.add_argument("--members", type=int, default=16)
    p.add_argument("--time-budget", type=float, help="seconds for the whole run: cuts the training steps so both "
                   "trainings together take at most 60%% of it")
    p.add_argument("--out", help="JSON path (default benchmarks/results/downscale_kolmogorov.json; none with --quick)")
    p.add_argument("--cache", help="netCDF file to keep the simulated fields in (reused when it exists)")
    p.add_argument("--model-dir", help="save the trained Downscaler here, or load it when it exists")
    p.add_argument("--s-noise", type=float, nargs="*", default=[],
                   help="EDM stochastic-sampler noise inflations offered to the calibration next to DDIM "
                        "(e.g. 1.0 1.03 1.05 1.08 1.12; default none)")
    p.add_argument("--cal-steps", type=int, nargs="+", default=[8, 16, 32, 64],
                   help="sampler steps offered to the calibration (DDIM and stochastic; default 8 16 32 64)")
    p.add_argument("--etas", type=float, nargs="*", default=[0.0, 0.5, 1.0],
                   help="DDIM etas offered to the calibration (default 0 0.5 1; none: no DDIM rows)")
    p.add_argument("--spectrum-tol", type=float, default=0.1,
                   help="the |high-k power error| allowed on validation by --criterion 'ssr|spectrum' (default 0.1)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--criterion", choices=("ssr", "ssr+spectrum", "ssr|spectrum"), default="ssr",
                   help="validation choice: spread-skill closest to 1, |ssr - 1| + |high-k power error|, or spread-skill "
                        "closest to 1 among the settings with |high-k power error| <= --spectrum-tol (see Downscaler.calibrate)")
    p.add_argument("--choose-from", help="reuse the validation table of an earlier run's JSON (same --model-dir and "
                   "--cache) instead of recomputing it, and apply --criterion to it")
    p.add_argument("--test-seed", type=int, default=3, help="seed of the held-out trajectories (another seed: a fresh "
                   "test set, simulated even when --cache holds one)")
    p.add_argument("--extra-test-seeds", type=int, nargs="*", default=[],
                   help="seeds of further held-out sets (same size), scored with the same chosen sampler")
    p.add_argument("--skip-regression", action="store_true", help="no U-Net regression baseline (e.g. with --choose-from)")
    p.add_argument("--heun", type=int, nargs="*", default=[16, 32],
                   help="Heun step counts offered to the validation choice next to the calibrated DDIM (default 16 32)")
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    device = _resolve_device(a.device)
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(a.threads)
    size, coarse_size = a.size, a.size // FACTOR
    net_spec = {"kwargs": {**NET["kwargs"], "channels": [int(c) for c in a.channels]}}
    steps = a.steps or (20 if a.quick else 2500)
    n_train, n_val, n_test = (4, 2, 2) if a.quick else (60, 4, 8)
    n_train, n_val, n_test = (a.n_train or n_train), (a.n_val or n_val), (a.n_test or n_test)
    members = 4 if a.quick else a.members
    gen_batch = 1024 if cuda else 256
    out_path = Path(a.out) if a.out else (None if a.quick else RESULTS)
    train_kw = {"steps": steps, "batch_size": a.batch_size, "lr": a.lr, "ema_decay": 0.999 if not a.quick else 0.9}
    sim = {"dt": None}
    result = {"setup": {"system": f"KolmogorovFlow(n={2 * size}, Re=100, drag=0.1), block-mean to {size}x{size}",
                        "fine": [size, size], "coarse": [coarse_size, coarse_size], "factor": FACTOR,
                        "trajectories": {"train": n_train, "val": n_val, "test": n_test}, "test_seed": a.test_seed,
                        "val_per_traj": a.val_per_traj, "criterion": a.criterion, "spectrum_tol": a.spectrum_tol,
                        "net": net_spec, **train_kw,
                        "quick": a.quick, "device": str(device),
                        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
                        "threads": torch.get_num_threads() if not cuda else None, "torch": torch.__version__,
                        "generation_batch": gen_batch, "simulation": sim},
              "seconds": {}, "errors": {}}

    def save():
        if out_path is None:
            return
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=_json_default))
        tmp.replace(out_path)

    def failed(stage: str, exc: BaseException) -> None:
        tb = traceback.format_exc()
        result["errors"][stage] = {"error": f"{type(exc).__name__}: {exc}", "traceback": tb}
        print(f"!! stage {stage!r} failed: {type(exc).__name__}: {exc}\n{tb}", flush=True)
        save()

    def finish():
        result["seconds"]["total"] = time.perf_counter() - t_start
        save()
        if out_path is not None:
            print(f"wrote {out_path}", flush=True)
        if result["errors"]:
            print(f"errors in stage(s): {sorted(result['errors'])}", flush=True)
        return result

    print(f"device {device} ({result['setup']['device_name']}), {size}x{size} from {coarse_size}x{coarse_size}, "
          f"net channels {net_spec['kwargs']['channels']}, batch {a.batch_size}, steps {steps}", flush=True)

    # ------------------------------------------------------------------ data
    t0 = time.perf_counter()
    try:
        if a.cache and Path(a.cache).exists():
            data = xr.open_dataset(a.cache).load()
            train, val, test = (data[f"vorticity_{k}"].rename({f"time_{k}": "time"}).to_dataset(name="vorticity")
                                for k in ("train", "val", "test"))
            if val.sizes["time"] != n_val * a.val_per_traj:
                raise ValueError(f"--cache {a.cache} holds {val.sizes['time']} validation fields, not --n-val "
                                 f"{n_val} x --val-per-traj {a.val_per_traj}; use another --cache")
            if train.sizes["x"] != size:
                raise ValueError(f"--cache {a.cache} holds {train.sizes['x']}x{train.sizes['x']} fields, not {size}x{size}")
            if a.test_seed != 3:
                test = snapshots(n_test, 8, seed=a.test_seed, size=size, device=device, info=sim)
        else:
            train = snapshots(n_train, 10, seed=1, size=size, device=device, info=sim)
            val = snapshots(n_val, a.val_per_traj, seed=2, size=size, device=device, info=sim)
            test = snapshots(n_test, 8, seed=a.test_seed, size=size, device=device, info=sim)
            if a.cache:
                xr.Dataset({f"vorticity_{k}": d["vorticity"].rename(time=f"time_{k}") for k, d in
                            (("train", train), ("val", val), ("test", test))}).to_netcdf(a.cache)
    except Exception as exc:
        failed("data", exc)
        return finish()
    t_data = time.perf_counter() - t0
    result["seconds"]["data"] = t_data
    result["setup"].update(n_train=int(train.sizes["time"]), n_val=int(val.sizes["time"]), n_test=int(test.sizes["time"]))
    print(f"data: train {train.sizes['time']}, val {val.sizes['time']}, test {test.sizes['time']} fields of "
          f"{size} x {size} ({t_data:.0f} s, dt {sim['dt']})", flush=True)
    save()

    fit_kw = {"factor": FACTOR, "periodic": True, "net": net_spec, "warmup_steps": 100, "device": device}
    have_model = bool(a.model_dir and Path(a.model_dir).exists())

    # ------------------------------------------------------------------ time budget: seconds per step
    if a.time_budget:
        try:
            t0 = time.perf_counter()
            n_probe = min(60, max(steps, 20))
            probe = Downscaler.fit(train, **fit_kw, **{**train_kw, "steps": n_probe})
            bs_eff = min(a.batch_size, int(train.sizes["time"]))
            s_diff = _diffusion_sec_per_step(probe.history, bs_eff)
            timing = {}
            train_regression(probe, train, **{**train_kw, "steps": n_probe}, net=net_spec, device=device, timing=timing)
            s_reg = timing["sec_per_step"]
            elapsed = time.perf_counter() - t_start
            avail = min(0.6 * a.time_budget, 0.8 * a.time_budget - elapsed)
            per_step = (0.0 if have_model else s_diff) + s_reg
            fit = int(avail / per_step) if per_step > 0 else steps
            new = max(min(steps, fit), min(steps, 50))
            result["budget"] = {"seconds": a.time_budget, "probe_steps": n_probe, "probe_seconds": time.perf_counter() - t0,
                                "sec_per_step_diffusion": s_diff, "sec_per_step_regression": s_reg,
                                "training_seconds_available": avail, "steps_requested": steps, "steps_used": new}
            print(f"time budget {a.time_budget:.0f} s: {s_diff * 1e3:.1f} ms/step diffusion, {s_reg * 1e3:.1f} ms/step "
                  f"regression (probe {n_probe} steps, {time.perf_counter() - t0:.0f} s); {avail:.0f} s for training "
                  f"-> {new} steps (asked {steps})", flush=True)
            steps = new
            train_kw["steps"] = steps
            result["setup"]["steps"] = steps
            del probe
        except Exception as exc:
            failed("time_budget", exc)
        save()

    # ------------------------------------------------------------------ diffusion
    t0 = time.perf_counter()
    try:
        if have_model:
            model = Downscaler.load(a.model_dir, device=device)
            model.history = [{"loss": float("nan")}]
        else:
            print(f"diffusion: training {steps} steps ...", flush=True)
            model = Downscaler.fit(train, **fit_kw, **train_kw)
            if a.model_dir:
                model.save(a.model_dir)
    except Exception as exc:
        failed("train_diffusion", exc)
        return finish()
    t_diff = time.perf_counter() - t0
    result["seconds"]["train_diffusion"] = t_diff
    hist = [r for r in model.history if "step" in r]
    result["diffusion_loss"] = {"last": float(model.history[-1]["loss"]),
                                "mean_last_100": float(np.mean([r["loss"] for r in hist[-100:]])) if hist else None}
    print(f"diffusion: {steps} steps in {t_diff:.0f} s ({t_diff / max(steps, 1) * 1e3:.1f} ms/step), "
          f"last loss {model.history[-1]['loss']:.3f}", flush=True)
    save()

    # ------------------------------------------------------------------ regression
    t0 = time.perf_counter()
    reg = None
    if a.skip_regression:
        result["skipped"] = ["train_regression"]
        print("regression: skipped (--skip-regression)", flush=True)
    else:
        try:
            print(f"regression: training {steps} steps ...", flush=True)
            reg = train_regression(model, train, **train_kw, net=net_spec, device=device,
                                   log_every=max(steps // 5, 1) if steps >= 1000 else 0)
        except Exception as exc:
            failed("train_regression", exc)
        t_reg = time.perf_counter() - t0
        result["seconds"]["train_regression"] = t_reg
        print(f"regression: {steps} steps in {t_reg:.0f} s", flush=True)
    save()

    # ------------------------------------------------------------------ sampler choice on validation fields
    cval = coarsen(val, FACTOR)
    t0 = time.perf_counter()
    grid = ((4, 8), (0.0, 1.0)) if a.quick else (tuple(a.cal_steps), tuple(a.etas))
    choices = []
    earlier = json.loads(Path(a.choose_from).read_text()) if a.choose_from else None
    try:
        if earlier is not None:  # the same model's validation table: only the choice is made again
            table = pd.DataFrame(earlier["variance_vs_ddim"])
            table["chosen"] = table.index == choose_setting(table, a.criterion, spectrum_tol=a.spectrum_tol)
            model.apply_setting(table.loc[table["chosen"]].iloc[0])
            result["choose_from"] = a.choose_from
        else:
            table = model.calibrate(cval, val, steps=grid[0], etas=grid[1], s_noises=a.s_noise,
                                    criterion=a.criterion, spectrum_tol=a.spectrum_tol, n_members=8,
                                    batch_size=gen_batch, device=device)
        t_cal = time.perf_counter() - t0
        print(f"calibration ({t_cal:.0f} s) on {val.sizes['time']} validation fields, 8 members:")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"), flush=True)
        result["seconds"]["calibrate"] = t_cal
        result["variance_vs_ddim"] = table.drop(columns="chosen").to_dict(orient="records")
        chosen = table.loc[table["chosen"]].iloc[0]
        choices.append({**model.sampler, "val_ssr": float(chosen["ssr"]), "val_crps": float(chosen["crps"]),
                        "val_high_k_error": float(chosen["high_k_error"])})
    except Exception as exc:
        failed("calibrate", exc)
    # the deterministic 2nd-order (Heun) ODE loses less variance than DDIM at equal steps: offer it to
    # the same validation choice (spread-skill closest to 1 on the validation fields, never the test set)
    vtruth = val["vorticity"]
    if earlier is not None:
        choices += [c for c in earlier.get("sampler_choices", []) if c["method"] == "heun"]
    for h in ([] if earlier is not None else a.heun):
        try:
            v = model.downscale(cval, 8, method="heun", steps=h, batch_size=gen_batch, device=device)["vorticity"]
            r = scores(v.assign_coords(y=vtruth.y, x=vtruth.x), vtruth)
            choices.append({"method": "heun", "steps": h, "val_ssr": r["ssr"], "val_crps": r["crps"],
                            "val_high_k_error": r["high_k_rel_error"]})
            print(f"heun {h} steps on validation: ssr {r['ssr']:.3f}, crps {r['crps']:.4f}, "
                  f"high-k {r['high_k_rel_error']:+.3f}", flush=True)
        except Exception as exc:
            failed(f"heun_{h}", exc)
    # the calibration criterion, applied to the Heun candidates too
    finite = [c for c in choices if np.isfinite(c["val_ssr"]) and np.isfinite(c["val_high_k_error"])]
    if finite:
        cand = pd.DataFrame({"ssr": [c["val_ssr"] for c in finite], "high_k_error": [c["val_high_k_error"] for c in finite]})
        best = finite[choose_setting(cand, a.criterion, spectrum_tol=a.spectrum_tol)]
        model.sampler = {k: v for k, v in best.items() if k in ("method", "steps", "eta", "s_noise", "churn")}
    result["sampler_choices"] = choices
    result["sampler"] = dict(model.sampler)
    save()

    # ------------------------------------------------------------------ held-out scores
    def held_out(test: xr.Dataset, key: str = "") -> dict:
        """Scores of the calibrated ensemble, bicubic and the regression on one held-out set."""
        truth, ctest = test["vorticity"], coarsen(test, FACTOR)
        rows = {}
        t0 = time.perf_counter()
        name = f"diffusion ({members} members)"
        try:
            ens = model.downscale(ctest, members, batch_size=gen_batch, device=device)["vorticity"]
            ens = ens.assign_coords(y=truth.y, x=truth.x)
            t_gen = time.perf_counter() - t0
            result["seconds"]["generate" + key] = t_gen
            print(f"generated {members} members for {truth.sizes['time']} test fields in {t_gen:.0f} s", flush=True)
            rows[name] = scores(ens, truth)
        except Exception as exc:
            failed("generate" + key, exc)
            t_gen = float("nan")
        try:
            bicubic = upsample(ctest, FACTOR, method="bicubic", periodic=True)["vorticity"].expand_dims(member=1)
            bicubic = bicubic.assign_coords(y=truth.y, x=truth.x)
            rows["bicubic"] = scores(bicubic.transpose("time", "member", "y", "x"), truth)
        except Exception as exc:
            failed("bicubic" + key, exc)
        if reg is not None:
            try:
                z = regress(reg, model, ctest, device=device, batch_size=256 if cuda else 64)
                regression = xr.DataArray(z, dims=("time", "member", "y", "x"), coords=truth.coords)
                rows["U-Net regression"] = scores(regression, truth)
            except Exception as exc:
                failed("regression_scores" + key, exc)
        rows = {k: rows[k] for k in ("bicubic", "U-Net regression", name) if k in rows}
        cols = ("crps", "rmse", "spread", "ssr", "rank_flatness", "high_k_rel_error")
        head = f"{'method':26s} " + " ".join(f"{c:>16s}" for c in cols)
        print(f"\nheld-out{key}: {truth.sizes['time']} fields, sampler {model.sampler} ({t_gen:.0f} s to generate)")
        print(head + "\n" + "-" * len(head))
        for k, r in rows.items():
            print(f"{k:26s} " + " ".join(f"{r[c]:16.4f}" for c in cols))
        targets = None
        if name in rows:
            d = rows[name]
            targets = {"crps_beats_bicubic": d["crps"] < rows["bicubic"]["crps"] if "bicubic" in rows else None,
                       "crps_beats_regression": (d["crps"] < rows["U-Net regression"]["crps"]
                                                 if "U-Net regression" in rows else None),
                       "high_k_within_10pct": abs(d["high_k_rel_error"]) <= 0.10}
            print("targets:", targets)
        return {"scores": rows, "targets": targets}

    out = held_out(test)
    result["scores"] = out["scores"]
    if out["targets"] is not None:
        result["targets"] = out["targets"]
    try:
        truth_spec = sm.radial_spectrum(test["vorticity"].astype(np.float64), dims=("y", "x"), reduce_dims="all").values
        result["truth_spectrum"] = truth_spec[: size // 2 + 1].tolist()
    except Exception as exc:
        failed("truth_spectrum", exc)
    save()
    # more held-out sets, simulated from other seeds after the choice: the same sampler, scored once each
    for seed in a.extra_test_seeds:
        try:
            extra = snapshots(n_test, 8, seed=seed, size=size, device=device, info=sim)
        except Exception as exc:
            failed(f"data_test_seed{seed}", exc)
            continue
        out = held_out(extra, key=f"_seed{seed}")
        result.setdefault("extra_test_sets", {})[str(seed)] = out
        save()
    return finish()


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
