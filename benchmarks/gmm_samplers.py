"""Every sampler against the exact Gaussian-mixture prior: sliced Wasserstein vs the two-sample floor.

For the 25-component grid mixture (MCGdiff recipe) in d = 2 and d = 80, draws 2,000 samples with
each sampler driven by the exact denoiser and reports SW1 (2,000 random directions) to an exact
sample set divided by the floor (SW1 between the same exact set and an independent one, averaged
over three independent draws), with the NFE.
A ratio below 2 means the sampler reproduces the mixture (the floor itself varies by about
0.3-1.5x from draw to draw). Writes benchmarks/results/gmm_samplers.json.

    python benchmarks/gmm_samplers.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sciffusion.diffusion import CountingDenoiser, sample
from sciffusion.testing import grid_mixture, sliced_wasserstein

SETTINGS = [
    ("heun", 5, {}), ("heun", 10, {}), ("heun", 20, {}),
    ("euler", 50, {}), ("euler", 100, {}),
    ("stochastic", 20, {"churn": 30.0}), ("stochastic", 40, {"churn": 30.0}),
    ("ddim", 50, {"eta": 1.0}), ("ddim", 100, {"eta": 1.0}), ("ddim", 50, {"eta": 0.0}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d=2 only")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--directions", type=int, default=2000)
    parser.add_argument("--sigma-max", type=float, default=2000.0)
    args = parser.parse_args()
    rows = []
    for d in (2,) if args.quick else (2, 80):
        gm = grid_mixture(d, seed=1)
        ref = gm.sample(args.samples, torch.Generator().manual_seed(1))
        floors = [sliced_wasserstein(ref, gm.sample(args.samples, torch.Generator().manual_seed(s)), args.directions)
                  for s in (2, 3, 4)]
        floor = sum(floors) / len(floors)
        print(f"\nd = {d}: floor SW1(exact, exact) = {floor:.4f} (mean of three independent draws: "
              f"{', '.join(f'{f:.4f}' for f in floors)})")
        print(f"{'method':12s} {'steps':>5s} {'options':>14s} {'NFE':>5s} {'SW1':>8s} {'SW/floor':>9s} {'wall s':>7s}")
        for method, steps, opts in SETTINGS:
            den = CountingDenoiser(gm)
            t0 = time.perf_counter()
            x = sample(den, (args.samples, d), steps=steps, method=method, sigma_max=args.sigma_max,
                       generator=torch.Generator().manual_seed(5), dtype=torch.float64, **opts)
            wall = time.perf_counter() - t0
            sw = sliced_wasserstein(x, ref, args.directions)
            row = dict(d=d, method=method, steps=steps, options=opts, nfe=den.nfe, sw=sw, floor=floor,
                       floors=floors, ratio=sw / floor, wall_s=wall)
            rows.append(row)
            opt = ",".join(f"{k}={v}" for k, v in opts.items()) or "-"
            print(f"{method:12s} {steps:5d} {opt:>14s} {den.nfe:5d} {sw:8.4f} {sw / floor:9.2f} {wall:7.2f}")
    out = Path(__file__).parent / "results" / "gmm_samplers.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"samples": args.samples, "directions": args.directions, "sigma_max": args.sigma_max,
                               "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
