"""The DiffusionPDE task suite (Darcy, Poisson, Helmholtz, Navier-Stokes) under one protocol (issue 23).

Per system, a joint ``(a, u)`` EDM prior is trained with the library's ``Trainer`` on the TRAINING split
(seed 0; checkpoints under ``--work``, so a stopped run resumes). Per task (*forward*: observe ``a`` at 3 %
of the nodes, recover ``u``; *inverse*: observe ``u``, recover ``a``; DiffusionPDE's nodes, 500 at 128 x 128,
``system.observation_task``) and noise level (``--noise``: 0 is DiffusionPDE's noiseless task; ``e > 0``
adds Gaussian noise of std ``e`` times the observed field's RMS over the training split, one value per
system and channel), every sampler setting of the stated grid (:func:`settings`; the public defaults of
``sciffusion.inverse.sample`` first) is scored on the VALIDATION split (seed 20000) and the best single-draw
error picks the setting. The TEST split (seed 10000, ``--n-test`` >= 100 for a real run) is then scored
once: the public defaults row and, when another setting won, that row, marked ``*``.

Scores, on the recovered field in physical units: the relative L2 error of single draws (mean over cases
and draws) and of the posterior mean of ``--draws`` draws; for Darcy's binary coefficient the pixel error
of ``a`` thresholded at 7.5 (single draw and mean); network calls per sample (forward passes plus VJPs
through the network, an upper bound where CG stops early; all settings <= 500); spread/skill
(``sciffusion.metrics.spread_skill_ratio``, finite-ensemble corrected: 1 = calibrated) and the coverage of
the central 90 % interval (the Student-t prediction interval of the draws, exact for Gaussian draws
exchangeable with the truth). FunDPS's published errors (Yao et al. 2025, 128 x 128, 500 points,
noiseless) are printed beside them as reference columns: published, not measured here.

Cases run in batches (``--case-batch``): each row of a batch is compared with its own case's observations
by :class:`CaseSensors` (``A(x_b) - y_case(b)`` against ``y = 0``), so every guidance method gives each row
what a run of that case alone gives (per-row CG and Polyak steps); the noise std is shared by a batch,
which is why the noisy level is one value per system and channel.

    python benchmarks/pde_inverse.py --quick --out /tmp/pde_smoke                   # smoke: 16 x 16, minutes
    python benchmarks/pde_inverse.py --grid 64 --work /tmp/pde64                    # CPU protocol at 64 x 64
    python benchmarks/pde_inverse.py --grid 128 --device cuda --work /tmp/pde128    # GPU: benchmarks/gpu_pde.sh

Writes ``<out>_validation.json`` (every setting's validation scores and the choice) and ``<out>_test.json``
(default ``--out`` benchmarks/results/pde_inverse_<grid>), each with ``run_meta()`` taken at the start, the
command line and the wall time; rows already in a JSON of the same protocol are kept on a rerun.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import scipy.stats
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _run_meta import run_meta  # noqa: E402
from darcy_inverse import ema_weights  # noqa: E402
from sciffusion.diffusion import Denoiser  # noqa: E402
from sciffusion.inverse import sample  # noqa: E402
from sciffusion.inverse.operators import Operator  # noqa: E402
from sciffusion.metrics import spread_skill_ratio  # noqa: E402
from sciffusion.nets import UNet2d  # noqa: E402
from sciffusion.physics import (DarcyResidual, HelmholtzProjection, HelmholtzResidual,  # noqa: E402
                                NavierStokesProjection, NavierStokesResidual)
from sciffusion.systems import DarcyFlow, Helmholtz, NavierStokes, Poisson  # noqa: E402
from sciffusion.systems.navier_stokes import NavierStokesFlow  # noqa: E402
from sciffusion.training import TensorPairs, Trainer, seeded  # noqa: E402

SYSTEMS = ("darcy", "poisson", "helmholtz", "navier-stokes")
SPLIT_SEEDS = {"train": 0, "val": 20_000, "test": 10_000}
TASKS = {"forward": (0, 1), "inverse": (1, 0)}  # (observed, recovered) channel of the joint (a, u) field
# FunDPS (Yao et al. 2025), relative error in % of single draws at 500 steps, 128 x 128, 500 noiseless
# points: (forward, inverse). Published, not measured here; Darcy's inverse figure is taken to be the
# pixel error of the binary coefficient (DiffusionPDE's convention; not checked in the paper's text).
PUBLISHED = {"darcy": (2.49, 5.18), "poisson": (1.99, 20.47), "helmholtz": (2.13, 17.16), "navier-stokes": (3.32, 8.48)}
DARCY_THRESHOLD = 7.5  # between the coefficient's two values 3 and 12
MAX_CALLS = 500  # the budget of network calls per sample


# ----------------------------------------------------------------------------- scores (tested)
def relative_l2(est: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``||est - truth|| / ||truth||`` over the last two axes (``truth`` broadcasts against ``est``)."""
    return np.linalg.norm((est - truth).reshape(*est.shape[:-2], -1), axis=-1) / np.linalg.norm(
        np.broadcast_to(truth, est.shape).reshape(*est.shape[:-2], -1), axis=-1)


def interval_coverage(draws: np.ndarray, truth: np.ndarray, level: float = 0.9) -> float:
    """Fraction of points of ``truth (K, ...)`` inside the central ``level`` prediction interval of
    ``draws (K, M, ...)``: ``mean +- t_{M-1}((1 + level)/2) s sqrt(1 + 1/M)`` (``s`` the ddof=1 std), which
    covers a new draw with probability ``level`` exactly when the draws are Gaussian; needs ``M >= 2``."""
    m = draws.shape[1]
    if m < 2:
        raise ValueError(f"draws must hold at least 2 draws per case on axis 1, got {m}")
    half = scipy.stats.t.ppf(0.5 + level / 2, m - 1) * draws.std(1, ddof=1) * math.sqrt(1 + 1 / m)
    return float((np.abs(truth - draws.mean(1)) <= half).mean())


def scores(draws: np.ndarray, truth: np.ndarray, binary: bool) -> dict:
    """Scores of ``draws (K, M, n, n)`` against ``truth (K, n, n)`` (physical units): single-draw and
    posterior-mean relative L2, pixel errors when ``binary``, spread/skill and 90 % coverage."""
    est = draws.mean(1)
    draw_err, mean_err = relative_l2(draws, truth[:, None]), relative_l2(est, truth)
    out = {"rel_l2_draw": float(draw_err.mean()), "rel_l2_mean": float(mean_err.mean()),
           "spread_skill": float(spread_skill_ratio(draws, truth, member_dim=1, reduce_dims="all")),
           "coverage90": interval_coverage(draws, truth), "per_case_rel_l2_draw": draw_err.mean(1).tolist()}
    if binary:
        wrong = (draws > DARCY_THRESHOLD) != (truth[:, None] > DARCY_THRESHOLD)
        out["pixel_draw"] = float(wrong.mean())
        out["pixel_mean"] = float(((est > DARCY_THRESHOLD) != (truth > DARCY_THRESHOLD)).mean())
    return out


# ----------------------------------------------------------------------------- batched observations
class CaseSensors(Operator):
    """Point sensors of one channel of joint fields ``(B, C, n, n)``, each batch row against its own case:
    ``A(x_b) - y_{b // draws}`` with ``y (K, num)`` the observations of K cases (use ``y = 0`` in ``sample``).

    Affine (declared nonlinear), so MMPS takes exact JVPs by autograd and DPS the unit Gram diagonal of point
    sensors; each row's likelihood, CG solve and Polyak step are those of its case run alone. A batch of one
    row (``sample``'s shape probes) is compared with case 0.
    """

    def __init__(self, points: np.ndarray, channel: int, y: torch.Tensor, draws: int):
        super().__init__()
        self.channel, self.draws = int(channel), int(draws)
        self.register_buffer("rows", torch.as_tensor(points[:, 0], dtype=torch.long), persistent=False)
        self.register_buffer("cols", torch.as_tensor(points[:, 1], dtype=torch.long), persistent=False)
        self.register_buffer("y", torch.as_tensor(y).repeat_interleave(self.draws, 0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, self.channel, self.rows, self.cols]
        if x.shape[0] not in (1, self.y.shape[0]):
            raise ValueError(f"x has {x.shape[0]} rows; CaseSensors expects {self.y.shape[0]} (cases x draws) or 1")
        return v - self.y[: x.shape[0]].to(v.dtype)


# ----------------------------------------------------------------------------- systems, data, priors
def make_system(name: str, n: int, device: str = "cpu"):
    if name == "navier-stokes":
        return NavierStokes(n=n, device=device)
    return {"darcy": DarcyFlow, "poisson": Poisson, "helmholtz": Helmholtz}[name](n=n)


def _draw(name: str, n: int, count: int, seed: int, start: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    return make_system(name, n, device).sample(count, seed=seed, start=start)


def split(name: str, n: int, part: str, count: int, args) -> np.ndarray:
    """``(count, 2, n, n)`` float64 ``(a, u)`` pairs of a split, cached in ``--work`` (member i is seeded by
    ``(split seed, i)``); the CPU-solved systems are drawn in ``--data-workers`` processes."""
    cache = Path(args.work) / f"data_{name}_n{n}_{part}{count}.npz"
    if cache.exists():
        with np.load(cache) as f:
            return f["x"]
    seed, workers = SPLIT_SEEDS[part], 1 if name == "navier-stokes" else max(1, args.data_workers)
    chunks = [(s, min(count, s + math.ceil(count / workers)) - s) for s in range(0, count, math.ceil(count / workers))]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else _Serial() as pool:
        parts = list(pool.map(_draw, *zip(*[(name, n, c, seed, s, args.device) for s, c in chunks])))
    x = np.stack([np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])], axis=1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.npz")
    np.savez(tmp, x=x)
    tmp.replace(cache)
    return x


class _Serial:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    map = staticmethod(map)


def train_prior(name: str, x_train: torch.Tensor, args) -> tuple[Denoiser, dict]:
    """EDM U-Net prior of the normalised pairs, trained (or resumed) in ``--work``, or with ``--prior-from`` the
    EMA weights of a run folder of that name there (e.g. from benchmarks/gpu_pde.sh); returns the EMA denoiser."""
    channels = [int(c) for c in args.channels.split(",")]
    with seeded(0):
        net = UNet2d(2, channels=channels, attention_levels=[], padding="circular" if name == "navier-stokes" else "zeros")
    run = Path(args.work) / f"prior_{name}_n{args.grid}_N{len(x_train)}_c{'-'.join(map(str, channels))}"
    if args.prior_from:
        den, (weights, meta) = Denoiser(net, sigma_data=1.0), ema_weights(Path(args.prior_from) / run.name)
        den.load_state_dict(weights)
        print(f"prior {name}: EMA weights at step {meta.get('step')} from {args.prior_from}", flush=True)
        return den.eval().requires_grad_(False), {"run": str(Path(args.prior_from) / run.name), "step": meta.get("step"),
                                                   "loaded": True, "channels": channels}
    trainer = Trainer(Denoiser(net, sigma_data=1.0), TensorPairs(x_train), batch_size=args.batch, lr=args.lr,
                      ema_decay=args.ema, seed=0, out_dir=run,
                      device=args.device, progress=False)
    t0 = time.perf_counter()
    hist = trainer.fit(args.train_steps, max_seconds=args.train_seconds)
    last = [h["loss"] for h in hist[-50:]] or [(trainer.last_record or {}).get("loss")]
    info = {"run": str(run), "step": trainer.step, "steps_asked": args.train_steps, "seconds_this_run":
            time.perf_counter() - t0, "stopped_early": bool(getattr(trainer, "stopped_early", False)),
            "final_loss": None if None in last else sum(last) / len(last), "batch": args.batch, "channels": channels}
    print(f"prior {name}: step {trainer.step}/{args.train_steps}, loss {info['final_loss']}, "
          f"{info['seconds_this_run']:.0f} s", flush=True)
    return trainer.ema.eval().requires_grad_(False), info


def physics(name: str, n: int, mean, std, device: str) -> dict:
    """The residual and projection callables of a system on normalised joint fields (None where too slow)."""
    if name == "darcy":  # DarcyProjection factorises on the CPU per sample and call: left out of the grid
        return {"residual": DarcyResidual(mean, std), "projection": None}
    if name == "navier-stokes":
        flow = NavierStokesFlow(n, device=device, dtype=torch.float32)
        return {"residual": NavierStokesResidual(flow, mean, std), "projection": NavierStokesProjection(flow, mean, std)}
    k = 0.0 if name == "poisson" else 1.0
    return {"residual": HelmholtzResidual(mean, std, k=k), "projection": HelmholtzProjection(mean, std, k=k)}


# ----------------------------------------------------------------------------- the grid
def settings(name: str, quick: bool) -> list[dict]:
    """The stated grid, public defaults first. ``steps`` sets the budget: calls = steps x passes <= 500."""
    grid = [{"name": "defaults", "guidance": "mmps", "steps": 50, "default": True}]  # sample()'s own defaults
    grid += [{"name": f"dps-zeta{z}", "guidance": "dps", "steps": 200, "zeta": z} for z in (1, 3, 10, 30)]
    grid += [{"name": "mmps-cg3", "guidance": "mmps", "steps": 100, "cg_iters": 3}]
    grid += [{"name": f"residual-zeta{z}", "guidance": "residual", "steps": 200, "zeta_obs": z, "zeta_pde": 0.5}
             for z in (3, 10)]
    if name != "darcy":
        grid += [{"name": f"solve-zeta{z}", "guidance": "projected", "steps": 200, "inner_guidance": "dps",
                  "guide_projected": True, "zeta": z} for z in (1, 3, 10)]
    if quick:  # smoke: three settings and few steps (the budgets above then do not hold)
        grid = [grid[0], grid[2], grid[-1]]
        grid = [{**g, "steps": max(4, g["steps"] // 25)} for g in grid]
    return grid


def likelihood_std(s: dict, obs: dict, args) -> float:
    """The noise std given to ``sample`` (normalised units): the true one, except that settings other than
    the defaults get ``--noiseless-std`` on noiseless data (DPS and residual guidance need std > 0)."""
    return obs["std"] if s.get("default") or obs["std"] > 0 else args.noiseless_std


def calls_per_sample(s: dict) -> int:
    """Network forward passes plus VJPs per sample (DDIM: one guided call per step)."""
    per_call = {"mmps": 2 + s.get("cg_iters", 5)}.get(s["guidance"], 2)
    return s["steps"] * per_call


def run_setting(prior, s: dict, cases: np.ndarray, obs: dict, phys: dict, args, part: str) -> np.ndarray:
    """Normalised draws ``(K, M, 2, n, n)`` of the K cases under setting ``s``."""
    m, n = args.draws, cases.shape[-1]
    opts = {k: v for k, v in s.items() if k not in ("name", "guidance", "steps", "default")}
    if s["guidance"] == "residual":
        opts["residual"] = phys["residual"]
    if s["guidance"] == "projected":
        opts["projection"] = phys["projection"]
    std = likelihood_std(s, obs, args)
    out = []
    for c0 in range(0, len(cases), args.case_batch):
        idx = range(c0, min(len(cases), c0 + args.case_batch))
        op = CaseSensors(obs["points"], obs["channel"], torch.as_tensor(obs["y"][list(idx)], dtype=torch.float32), m)
        gens = [torch.Generator(args.device).manual_seed((SPLIT_SEEDS[part] * 100_000 + i) * 64 + j)
                for i in idx for j in range(m)]
        x = sample(prior, op, torch.zeros(len(obs["points"])), noise_std=std, guidance=s["guidance"],
                   n_members=len(gens), steps=s["steps"], generator=gens, event_shape=(2, n, n),
                   device=args.device, **opts)
        out.append(x.float().cpu().reshape(len(idx), m, 2, n, n).numpy())
    return np.concatenate(out)


def observations(system, x_phys: np.ndarray, task: str, noise_phys: float, part: str, mean, std) -> dict:
    """Points, normalised observations ``y (K, num)`` and the normalised noise std of a split and task."""
    observed, _ = TASKS[task]
    t = system_task(system, x_phys, task)
    y = t["y"] + noise_phys * np.stack([np.random.default_rng([SPLIT_SEEDS[part], i, observed]).standard_normal(
        t["y"].shape[1]) for i in range(len(x_phys))]) if noise_phys > 0 else t["y"]
    return {"points": t["points"], "channel": observed, "y": (y - mean[observed]) / std[observed],
            "std": noise_phys / std[observed]}


def system_task(system, x_phys: np.ndarray, task: str) -> dict:
    """``system.observation_task`` (noiseless): DiffusionPDE's nodes of the observed channel."""
    return system.observation_task(x_phys[:, 0], x_phys[:, 1], task, noise=0.0)


# ----------------------------------------------------------------------------- records and tables
class Record:
    """A results JSON rewritten after every row; rows of an earlier run with the same protocol are kept."""

    def __init__(self, path: Path, meta: dict, protocol: dict, t0: float):
        self.path, self.t0 = path, t0
        old = json.loads(path.read_text()) if path.exists() else {}
        self.data = {"meta": meta, "command": meta["command"], "protocol": protocol,
                     "rows": old.get("rows", {}) if old.get("protocol") == protocol else {}}

    def get(self, key: str, step: int):
        """The row of ``key`` if it was scored with the prior at training step ``step``."""
        row = self.data["rows"].get(key)
        return row if row is not None and row.get("prior", {}).get("step") == step else None

    def put(self, key: str, row: dict) -> None:
        self.data["rows"][key] = row
        self.data["wall_s"] = time.perf_counter() - self.t0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def evaluate(prior, s, cases, obs, phys, args, part, binary, target, mean, std) -> dict:
    t0 = time.perf_counter()
    draws = run_setting(prior, s, cases, obs, phys, args, part)[:, :, target].astype(np.float64) * std[target] + mean[target]
    wall = time.perf_counter() - t0
    truth = cases[:, target] * std[target] + mean[target]
    return {"setting": s["name"], "options": {k: v for k, v in s.items() if k != "name"},
            "calls_per_sample": calls_per_sample(s), "cases": len(cases), "draws": args.draws,
            "noise_std_normalised": obs["std"], "likelihood_std": likelihood_std(s, obs, args),
            "s_per_sample": wall / (len(cases) * args.draws), **scores(draws, truth, binary)}


def fmt(row: dict | None, key: str) -> str:
    return "-" if row is None or row.get(key) is None else f"{100 * row[key]:.2f}"


def print_rows(rows: list[tuple[str, dict]], header: bool = True) -> None:
    if header:
        print(f"{'system':13s} {'task':8s} {'noise':>5s} {'setting':20s} {'1 draw %':>8s} {'mean %':>7s} {'pix 1/mean %':>13s} "
              f"{'calls':>5s} {'spr/skill':>9s} {'cov90':>5s}")
    for label, r in rows:
        pix = f"{fmt(r, 'pixel_draw')}/{fmt(r, 'pixel_mean')}" if "pixel_draw" in r else "-"
        print(f"{label} {r['setting'] + ('' if r['options'].get('default') else ' *'):20s} {fmt(r, 'rel_l2_draw'):>8s} "
              f"{fmt(r, 'rel_l2_mean'):>7s} {pix:>13s} {r['calls_per_sample']:5d} {r['spread_skill']:9.2f} "
              f"{r['coverage90']:5.2f}", flush=True)


def print_summary(chosen: dict, grid: int) -> None:
    """FunDPS-style: forward / inverse single-draw error of the chosen settings, noiseless."""
    print(f"\nSingle-draw relative error (%), noiseless, {grid} x {grid}, chosen settings (Darcy inverse: pixel error); "
          "FunDPS: published, 128 x 128, 500 points, not measured here")
    print(f"{'system':13s} {'forward':>8s} {'inverse':>8s}   {'FunDPS fwd (published)':>22s} {'FunDPS inv (published)':>22s}")
    for name in SYSTEMS:
        fwd, inv = chosen.get((name, "forward")), chosen.get((name, "inverse"))
        if fwd is None and inv is None:
            continue
        key = "pixel_draw" if name == "darcy" else "rel_l2_draw"
        print(f"{name:13s} {fmt(fwd, 'rel_l2_draw'):>8s} {fmt(inv, key):>8s}   {PUBLISHED[name][0]:22.2f} {PUBLISHED[name][1]:22.2f}")


# ----------------------------------------------------------------------------- main
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", type=int, default=64, help="grid size n (64 on a CPU, 128: DiffusionPDE's)")
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--noise", nargs="+", type=float, default=[0.0, 0.01],
                   help="observation noise, fractions of the observed field's training RMS (0: noiseless)")
    p.add_argument("--noiseless-std", type=float, default=0.01,
                   help="likelihood std (normalised units) of the non-default settings on noiseless data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--train-steps", type=int, default=20_000)
    p.add_argument("--train-seconds", type=float, help="wall-time budget per prior (checkpointed; rerun resumes)")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=16)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--draws", type=int, default=4, help="posterior draws per case (>= 2)")
    p.add_argument("--case-batch", type=int, default=8, help="cases sampled together (rows = cases x draws)")
    p.add_argument("--settings", nargs="+", help="only these grid settings (names as in the validation JSON)")
    p.add_argument("--channels", default="32,64,128")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--data-workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke: 16 x 16, 64 training pairs, few steps and cases")
    p.add_argument("--work", default=str(Path(__file__).resolve().parents[1] / "runs" / "pde_inverse"))
    p.add_argument("--prior-from", help="a folder with the priors' run folders (EMA weights): load them, train nothing")
    p.add_argument("--out", help="JSON prefix (default benchmarks/results/pde_inverse_<grid>)")
    args = p.parse_args(argv)
    if args.quick:
        args.grid, args.n_train, args.n_val, args.n_test, args.draws = 16, 64, 2, 3, 2
        args.train_steps, args.channels, args.batch = min(args.train_steps, 30), "8,16", 16
    if args.draws < 2:
        p.error("--draws must be >= 2 (spread and coverage need two draws)")
    known = {s["name"] for name in SYSTEMS for s in settings(name, args.quick)}
    if args.settings and not set(args.settings) <= known:
        p.error(f"unknown --settings {sorted(set(args.settings) - known)}; the grid has {sorted(known)}")
    args.out = args.out or str(Path(__file__).parent / "results" / f"pde_inverse_{args.grid}")
    return args


def run_system(name: str, args, val: Record, test: Record, printed: list, chosen: dict) -> None:
    """Train (or load) one system's prior, choose each task's setting on the validation split, score the test split."""
    system, n = make_system(name, args.grid, args.device), args.grid
    train = split(name, n, "train", args.n_train, args)
    mean, std = train.mean(axis=(0, 2, 3)), train.std(axis=(0, 2, 3))
    norm = lambda x: ((x - mean[:, None, None]) / std[:, None, None]).astype(np.float32)  # noqa: E731
    prior, info = train_prior(name, torch.from_numpy(norm(train)), args)
    prior, rms = prior.to(args.device), np.sqrt((train**2).mean(axis=(0, 2, 3)))
    phys = physics(name, n, mean.tolist(), std.tolist(), args.device)
    grid = [s for s in settings(name, args.quick) if not args.settings or s["name"] in args.settings or s.get("default")]
    data = {part: split(name, n, part, count, args) for part, count in (("val", args.n_val), ("test", args.n_test))}
    for task, noise in ((t, e) for t in args.tasks for e in args.noise):
        observed, target = TASKS[task]
        binary, label = name == "darcy" and target == 0, f"{name:13s} {task:8s} {noise:5.3f}"
        criterion = "pixel_draw" if binary else "rel_l2_draw"
        obs = {part: observations(system, data[part], task, noise * rms[observed], part, mean, std) for part in data}

        def scored(record: Record, part: str, s: dict, **extra) -> dict:
            key = f"{name}/{task}/{noise}/{s['name']}"
            row = record.get(key, info["step"]) or evaluate(prior, s, norm(data[part]), obs[part], phys, args, part,
                                                             binary, target, mean, std)
            record.put(key, {**row, **extra, "prior": info})
            return row

        cand = [scored(val, "val", s) for s in grid]
        best = min(cand, key=lambda r: r[criterion] if math.isfinite(r[criterion]) else math.inf)["setting"]
        val.put(f"{name}/{task}/{noise}/chosen", {"setting": best, "criterion": criterion})
        for s in grid:
            if s.get("default") or s["name"] == best:
                printed.append((label, scored(test, "test", s, chosen=s["name"] == best)))
                print_rows(printed[-1:], header=False)
                if noise == 0 and s["name"] == best:
                    chosen[(name, task)] = printed[-1][1]


def main(argv=None) -> None:
    meta, t0 = run_meta(), time.perf_counter()
    args = parse(argv)
    torch.set_num_threads(args.threads)
    protocol = {k: v for k, v in vars(args).items() if k not in ("device", "threads", "data_workers", "out", "work",
                                                                  "settings", "case_batch", "systems", "tasks")}
    val = Record(Path(f"{args.out}_validation.json"), meta, protocol, t0)
    test = Record(Path(f"{args.out}_test.json"), meta, protocol, t0)
    chosen, printed = {}, []
    print_rows([])
    for name in args.systems:
        run_system(name, args, val, test, printed, chosen)
    print(f"\nTest split ({args.n_test} cases x {args.draws} draws, {args.grid} x {args.grid}); * = not the public "
          f"defaults, chosen on the validation split ({args.n_val} cases)")
    print_rows(printed)
    print_summary(chosen, args.grid)
    print(f"wrote {val.path} and {test.path} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
