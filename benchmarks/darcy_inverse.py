"""Darcy flow forward and inverse problems with a joint (a, u) diffusion prior.

Data: ``sciffusion.systems.DarcyFlow`` (thresholded GRF coefficient a in {3, 12}, -div(a grad u) = 1,
u = 0 on the boundary) on an n x n grid; the prior is an EDM U-Net over the normalised pair
(a, u), trained here (``--train-steps``) with the plain EDM loss and, for the PIDM prior, with
``edm_loss(..., residual=DarcyResidual, residual_weight=--pidm-weight)``.

Tasks (DiffusionPDE protocol, ``--fraction`` of the grid observed, seeds 1 for a and 0 for u):
forward = observe a at sparse points, recover u; inverse = observe u at sparse points, recover a.
Per test case, ``--samples`` posterior draws; reported over ``--cases`` cases: relative L2 error of
the ensemble mean of the unobserved field, the pixel error rate of a thresholded at 7.5 (inverse),
the same two scores of single samples (``*_member`` in the JSON, "1 draw" in the table),
the RMS PDE residual of the samples (interior, physical units; mean and median over cases, since a few
diverged draws can dominate the mean), spread/skill (mean ensemble
std over RMSE of the ensemble mean, with the (M+1)/M finite-ensemble factor; 1 = calibrated),
denoiser evaluations per sample (forward + VJP) and seconds per sample.

Settings compared, on the EDM prior and on the PIDM prior (``pidm+...``): ``dps`` (observation
guidance only), ``residual`` (the same observation guidance plus Darcy residual guidance),
``mmps`` (covariance-aware observation guidance) and ``solve`` (``guidance="projected"`` with
:class:`~sciffusion.inverse.DarcyProjection` and ``guide_projected=True``: the solution channel is
the exact PDE solve of the coefficient channel at every step, and DPS differentiates the
observations through that solve; one sparse LU factorisation per sample and denoiser call).

    python benchmarks/darcy_inverse.py                                   # 64x64 (hours of CPU training)
    python benchmarks/darcy_inverse.py --n 32 --train 512 --train-steps 400 --cases 50 --samples 4

Trained priors are checkpointed under ``--workdir`` (atomic, resumable). Writes
benchmarks/results/darcy_inverse.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file as read_tensors

from sciffusion.diffusion import Denoiser
from sciffusion.inverse import DarcyProjection, DarcyResidual, SparseSensors, sample
from sciffusion.nets import UNet2d
from sciffusion.systems.darcy import DarcyFlow
from sciffusion.training import TensorPairs, Trainer


def data(args):
    system = DarcyFlow(n=args.n)
    test_seed = 10_000 if args.split == "test" else 20_000
    cache = Path(args.workdir) / f"data_n{args.n}_N{args.train}_{args.split}{args.cases}.npz"
    if cache.exists():  # the solves are the slow part at 128x128; keyed by everything that defines the data
        with np.load(cache) as f:
            a, u, a_t, u_t = f["a"], f["u"], f["a_t"], f["u_t"]
    else:
        a, u = system.sample(args.train, seed=0)
        a_t, u_t = system.sample(args.cases, seed=test_seed)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.npz")  # concurrent runs each write their own
        np.savez(tmp, a=a, u=u, a_t=a_t, u_t=u_t)
        tmp.replace(cache)
    train = torch.from_numpy(np.stack([a, u], axis=1)).float()
    test = torch.from_numpy(np.stack([a_t, u_t], axis=1)).float()
    mean, std = train.mean(dim=(0, 2, 3)), train.std(dim=(0, 2, 3))
    norm = lambda f: (f - mean[:, None, None]) / std[:, None, None]
    return norm(train), norm(test), mean, std


def ema_weights(run: Path) -> tuple[dict, dict]:
    """The EMA weights and trainer metadata of a run folder's ``latest`` checkpoint."""
    step_dir = run / (run / "latest").read_text()  # the EMA weights alone travel from a GPU run
    return read_tensors(step_dir / "ema.safetensors"), json.loads((step_dir / "trainer.json").read_text())


def train_prior(x_train, residual, weight, args, name, init=None, steps=None, seconds=None):
    """Train (or resume from ``--workdir``) a U-Net EDM prior; ``init`` starts from another prior's weights.

    ``seconds``: wall-time budget (training stops there, checkpointed). With ``--eval-only`` the
    latest checkpoint's EMA weights are loaded and nothing is trained.
    """
    channels = [int(c) for c in args.channels.split(",")]
    den = Denoiser(UNet2d(2, channels=channels, attention_levels=[]), sigma_data=1.0)
    run = Path(args.workdir) / name
    if name.startswith("edm") and args.edm_from:  # a finished EDM prior from elsewhere, never trained here
        run = Path(args.edm_from)
    if args.eval_only or run != Path(args.workdir) / name:
        weights, meta = ema_weights(run)
        den.load_state_dict(weights)
        print(f"prior {name}: loaded the EMA weights at step {meta.get('step')} from {run}", flush=True)
        return den.eval().requires_grad_(False)
    if init is not None:
        den.load_state_dict(init.state_dict())
    elif args.init_from and name.startswith("edm"):  # continue another run's prior (its EMA weights; a fresh optimiser)
        den.load_state_dict(ema_weights(Path(args.init_from))[0])
        print(f"prior {name}: starting from the EMA weights in {args.init_from}", flush=True)
    steps = steps or args.train_steps
    precision = "fp32" if residual is not None else args.precision  # the residual's finite differences need fp32
    trainer = Trainer(den, TensorPairs(x_train), batch_size=args.batch, lr=args.lr,
                     warmup_steps=100, ema_decay=args.ema, seed=0, progress=False,
                     out_dir=run, checkpoint_every=max(50, steps // 4),
                     residual=residual, residual_weight=weight, device=args.device, mixed_precision=precision)
    t0 = time.perf_counter()
    hist = trainer.fit(steps, max_seconds=seconds)
    if hist:
        last = [h["loss"] for h in hist[-50:]]
        print(f"prior {name}: {trainer.step} steps{' (time budget)' if trainer.stopped_early else ''}, final loss "
              f"{sum(last) / len(last):.4f}, {time.perf_counter() - t0:.0f} s on {args.device}", flush=True)
    else:
        print(f"prior {name}: loaded the finished checkpoint ({steps} steps) from {args.workdir}", flush=True)
    return trainer.ema.eval().requires_grad_(False).cpu()


def evaluate(prior, x_test, mean, std, residual, task, method, args):
    n, m = args.n, args.samples
    observe, target = (0, 1) if task == "forward" else (1, 0)
    sensors = SparseSensors((n, n), fraction=args.fraction, seed=1 if observe == 0 else 0, channels=[observe])
    opts = {"mmps": {"cg_iters": args.cg_iters}, "dps": {"zeta": args.zeta_obs},
            "residual": {"residual": residual, "zeta_obs": args.zeta_obs, "zeta_pde": args.zeta_pde,
                         "pde_sigma": args.pde_sigma},
            "solve": {"projection": DarcyProjection(mean.tolist(), std.tolist()), "inner_guidance": "dps",
                      "guide_projected": True, "zeta": args.zeta_obs}}[method]
    errs, pix, res, spread, skill, wall = [], [], [], [], [], 0.0
    member_errs, member_pix, disagree = [], [], []  # the same scores of single samples, averaged
    phys = lambda x: x * std[:, None, None] + mean[:, None, None]
    for case in range(len(x_test)):
        y = sensors(x_test[case : case + 1])[0]
        t0 = time.perf_counter()
        gen = torch.Generator(device=args.eval_device).manual_seed(case)
        x = sample(prior, sensors, y, noise_std=args.noise_std, guidance="projected" if method == "solve" else method,
                   n_members=m, steps=args.steps,
                   sampler=args.sampler, sigma_max=args.sigma_max, event_shape=(2, n, n), generator=gen,
                   device=args.eval_device, **opts).cpu()
        wall += time.perf_counter() - t0
        xp, truth = phys(x), phys(x_test[case])
        est = xp[:, target].mean(0)
        errs.append(float((est - truth[target]).norm() / truth[target].norm()))
        member_errs.append(float(((xp[:, target] - truth[target]).flatten(1).norm(dim=1) / truth[target].norm()).mean()))
        if target == 0:
            pix.append(float(((est > 7.5) != (truth[0] > 7.5)).float().mean()))
            member_pix.append(float(((xp[:, 0] > 7.5) != (truth[0] > 7.5)).float().mean()))
            q = (xp[:, 0] > 7.5).float().mean(0)  # pixel-wise disagreement of two draws, the binary "spread":
            disagree.append(float((2 * q * (1 - q) * m / max(m - 1, 1)).mean()))  # = 1-draw error if calibrated
        r = residual(x)[:, 1:-1, 1:-1]
        res.append(float(r.pow(2).mean().sqrt()))
        skill.append(float((est - truth[target]).pow(2).mean()))
        spread.append(float(xp[:, target].var(0, unbiased=True).mean()))
    cases = len(x_test)
    calls = 2 * args.steps - 1 if args.sampler in ("heun", "stochastic") else args.steps
    evals = calls * {"mmps": 2 + args.cg_iters, "dps": 2, "residual": 3, "solve": 2}[method]  # fwd + VJPs (+ residual grad)
    return dict(task=task, method=method, rel_l2=sum(errs) / cases, pixel_error=(sum(pix) / cases if pix else None),
                rel_l2_member=sum(member_errs) / cases,
                pixel_error_member=(sum(member_pix) / cases if member_pix else None),
                pixel_disagreement=(sum(disagree) / cases if disagree else None),
                residual_rms=sum(res) / cases, residual_rms_median=float(np.median(res)),
                spread_skill=math.sqrt((m + 1) / m * sum(spread) / cases) / math.sqrt(sum(skill) / cases),
                evals_per_sample=evals, s_per_sample=wall / (cases * m), cases=cases, samples=m,
                per_case={"rel_l2": errs, "pixel_error": pix, "residual_rms": res})  # outliers show here


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--train-steps", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--channels", default="32,64,128")
    p.add_argument("--pidm-weight", type=float, default=1e-3)
    p.add_argument("--pidm-finetune", type=int, default=0,
                   help="train the PIDM prior by continuing the EDM prior for this many steps (0: from scratch)")
    p.add_argument("--cases", type=int, default=50)
    p.add_argument("--split", default="test", choices=["test", "val"],
                   help="score the test cases (seed 10000) or validation cases (seed 20000, for choosing zeta)")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=50, help="sampler steps (Heun: 2*steps-1 denoiser calls)")
    p.add_argument("--sampler", default="heun", choices=["heun", "ddim", "euler", "stochastic"])
    p.add_argument("--cg-iters", type=int, default=3)
    p.add_argument("--tasks", nargs="+", default=["forward", "inverse"], choices=["forward", "inverse"])
    p.add_argument("--fraction", type=float, default=0.03)
    p.add_argument("--noise-std", type=float, default=0.01, help="in normalised units")
    p.add_argument("--sigma-max", type=float, default=80.0)
    p.add_argument("--zeta-obs", type=float, default=1.0, help="observation guidance strength (dps zeta, residual zeta_obs)")
    p.add_argument("--zeta-pde", type=float, default=0.5)
    p.add_argument("--pde-sigma", type=float, default=1.0)
    p.add_argument("--settings", nargs="+", default=["dps", "residual", "mmps", "pidm+dps", "pidm+residual", "pidm+mmps"],
                   help="[pidm+]{dps,mmps,residual,solve}: prior and guidance (solve: DPS through the exact PDE "
                        "solve of the coefficient channel, DarcyProjection)")
    p.add_argument("--workdir", default=str(Path(__file__).resolve().parents[1] / "runs" / "darcy_inverse"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "darcy_inverse.json"))
    p.add_argument("--device", default="cpu", help="training device")
    p.add_argument("--eval-device", default="cpu",
                   help="where the posterior samples are drawn (cuda: the priors and sensors move there; scores on the CPU)")
    p.add_argument("--precision", default="auto", help="Trainer mixed_precision of the EDM prior (auto: bf16 on CUDA)")
    p.add_argument("--init-from", help="a run folder (with 'latest') whose EMA weights start the EDM prior's training")
    p.add_argument("--edm-from", help="a run folder (with 'latest') holding the EDM prior: loaded, not trained "
                   "(e.g. to PIDM-fine-tune a kept prior)")
    p.add_argument("--train-seconds", type=float, help="wall-time budget of the EDM prior's training")
    p.add_argument("--pidm-seconds", type=float, help="wall-time budget of the PIDM prior's training")
    p.add_argument("--train-only", action="store_true", help="train the priors the settings need, evaluate nothing")
    p.add_argument("--eval-only", action="store_true",
                   help="load the priors' latest checkpoints from --workdir (e.g. trained on a GPU), train nothing")
    args = p.parse_args()
    if args.train_only and args.eval_only:
        p.error("--train-only and --eval-only exclude each other")
    torch.set_num_threads(args.threads)
    x_train, x_test, mean, std = data(args)
    residual = DarcyResidual(mean=mean.tolist(), std=std.tolist())
    tag = f"n{args.n}_N{args.train}_s{args.train_steps}_c{args.channels.replace(',', '-')}"
    priors = {}
    rows = []
    print(f"{'task':8s} {'setting':10s} {'rel L2':>7s} {'pix err':>7s} {'1 draw':>13s} {'PDE res':>8s} {'spr/skill':>9s} "
          f"{'evals':>6s} {'s/sample':>8s}", flush=True)
    for setting in args.settings:
        kind = "pidm" if setting.startswith("pidm") else "edm"
        if "edm" not in priors:
            priors["edm"] = train_prior(x_train, None, 0.0, args, f"edm_{tag}", seconds=args.train_seconds)
        if kind == "pidm" and "pidm" not in priors:
            if args.pidm_finetune:  # continue the EDM prior with the residual term
                priors["pidm"] = train_prior(x_train, residual, args.pidm_weight, args,
                                             f"pidm_ft{args.pidm_finetune}_{tag}", init=priors["edm"],
                                             steps=args.pidm_finetune, seconds=args.pidm_seconds)
            else:
                priors["pidm"] = train_prior(x_train, residual, args.pidm_weight, args, f"pidm_{tag}",
                                             seconds=args.pidm_seconds)
        if args.train_only:
            continue
        method = setting.split("+")[-1]
        for task in args.tasks:
            row = evaluate(priors[kind].to(args.eval_device), x_test, mean, std, residual, task, method, args)
            row["setting"] = setting
            rows.append(row)
            pix = f"{row['pixel_error']:.3f}" if row["pixel_error"] is not None else "-"
            one = f"{row['rel_l2_member']:.3f}" + (f"/{row['pixel_error_member']:.3f}" if row["pixel_error"] is not None else "")
            print(f"{task:8s} {setting:10s} {row['rel_l2']:7.3f} {pix:>7s} {one:>13s} {row['residual_rms']:8.3g} "
                  f"{row['spread_skill']:9.2f} {row['evals_per_sample']:6d} {row['s_per_sample']:8.2f}", flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    if not args.train_only:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
