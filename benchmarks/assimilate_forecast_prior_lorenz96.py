"""Cycled Lorenz-96 with a trained prior ``x | forecast`` (issue 25, item 1b) against the training-free
filter and DAPPER's EnKF-Sqrt, on the same truth and observations.

Setting: DAPPER's ``Lorenz96.sakov2008`` as ``assimilate_lorenz96.py`` builds it (40 variables, an
analysis every 0.05, every variable observed, R = I), N = 24 members; that script's ``problem``,
``run_ours``, ``run_dapper`` and ``scores`` are imported, not copied.

* trained prior: :func:`sciffusion.assimilate.train_forecast_prior` on sciffusion's own Lorenz-96
  (16 trajectories of 500 states, 2 perturbed forecasts per state), then ``cycle(..., prior=...)``
  with Heun 12 steps, MMPS ``cg_iters = 3``. Its knob, the training ``perturbation`` (the previous
  analysis error the prior assumes), is chosen on the validation seed; the test seed is scored once.
* training-free: ``cycle`` with the ensemble prior at the settings ``assimilate_lorenz96.py`` chose
  on its validation seed (``results/assimilate_lorenz96_validation.json``).
* EnKF-Sqrt N = 24, infl 1.02, rot (DAPPER; published 0.18).

    OMP_NUM_THREADS=1 python benchmarks/assimilate_forecast_prior_lorenz96.py

Trained priors are cached under ``runs/forecast_prior_lorenz96/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _run_meta import run_meta  # noqa: E402
from assimilate_lorenz96 import VALIDATION, problem, run_dapper, run_ours, dapper_method  # noqa: E402

from sciffusion.assimilate import ForecastPrior, train_forecast_prior  # noqa: E402
from sciffusion.systems.lorenz96 import Lorenz96  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "assimilate_forecast_prior_lorenz96.json"
CACHE = ROOT / "runs" / "forecast_prior_lorenz96"
SAMPLER = {"steps": 12, "cg_iters": 3}


def prior_for(perturbation: float, steps: int) -> tuple[ForecastPrior, float]:
    """The trained prior for ``perturbation`` (cached) and its training seconds (0 when cached)."""
    path = CACHE / f"perturbation{perturbation:g}_steps{steps}"
    if (path / "config.json").exists():
        return ForecastPrior.load(path), 0.0
    start = time.perf_counter()
    prior = train_forecast_prior(Lorenz96(k=40), perturbation=perturbation, n_trajectories=16, length=500, draws=2,
                                 steps=steps, batch_size=64, lr=2e-3, progress=False, seed=0)
    sec = time.perf_counter() - start
    prior.save(path)
    return prior, sec


def row(r: dict) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in r.items() if isinstance(v, float))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=300)
    p.add_argument("--burn", type=int, default=50)
    p.add_argument("--val-seed", type=int, default=0)
    p.add_argument("--test-seed", type=int, default=1)
    p.add_argument("--perturbations", type=float, nargs="+", default=[0.2, 0.4])
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    start, meta = time.time(), run_meta()
    out = {**meta, "cycles": args.cycles, "burn": args.burn, "val_seed": args.val_seed, "test_seed": args.test_seed,
           "train_steps": args.train_steps, "sampler": SAMPLER, "validation": [], "test": {}}

    _, _, yy, truth = problem("linear", args.cycles, args.val_seed)
    priors = {}
    for eps in args.perturbations:
        prior, train_s = prior_for(eps, args.train_steps)
        priors[eps] = prior
        r = run_ours("linear", yy, truth, args.burn, args.val_seed, prior=prior, **SAMPLER)
        out["validation"].append({"perturbation": eps, "train_seconds": train_s, "scale": prior.scale, **r})
        print("validation perturbation", eps, row(r), flush=True)
    best = min(out["validation"], key=lambda r: r["rmse"] if r["rmse"] == r["rmse"] else float("inf"))
    out["chosen_perturbation"] = best["perturbation"]

    model, xx, yy, truth = problem("linear", args.cycles, args.test_seed)
    free = json.loads(VALIDATION.read_text())["chosen"]["linear"]
    runs = {"trained prior": run_ours("linear", yy, truth, args.burn, args.test_seed,
                                      prior=priors[best["perturbation"]], **SAMPLER),
            "training-free": run_ours("linear", yy, truth, args.burn, args.test_seed, **free["sciffusion"]),
            "EnKF-Sqrt": run_dapper(dapper_method("EnKF-Sqrt", **free["EnKF-Sqrt"]), model, xx, yy, truth,
                                    args.burn, args.test_seed + 2000)}
    settings = {"trained prior": {"perturbation": best["perturbation"], **SAMPLER},
                "training-free": free["sciffusion"], "EnKF-Sqrt": free["EnKF-Sqrt"]}
    print(f"\ntest seed {args.test_seed}, {args.cycles} cycles after a burn-in of {args.burn}, N = 24")
    print("| method | settings | RMSE | spread | spread-skill | CRPS | s / cycle |\n|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        out["test"][name] = {"settings": settings[name], **r}
        cells = " | ".join(f"{r.get(k, float('nan')):.3f}" for k in ("rmse", "spread", "spread_skill", "crps",
                                                                      "sec_per_cycle"))
        print(f"| {name} | {settings[name]} | {cells} |")
    out["wall_s"] = time.time() - start
    args.out.write_text(json.dumps(out, indent=1, default=float))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
