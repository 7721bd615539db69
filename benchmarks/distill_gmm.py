"""Distillation against the exact yardstick: students of the exact Gaussian-mixture denoiser.

The 25-component grid mixture (MCGdiff recipe, ``sciffusion.testing.grid_mixture``) in d = 2 and
d = 80. Each student (an MLP Denoiser trained from scratch, since the teacher is analytic) is
distilled with ``sciffusion.distill.distill`` at its public defaults except ``student=`` and
``sigma_max = 2000`` (the mixture spans +-16 with weights far from uniform, so
EDM's 80 leaves the start distribution visibly off; the sampler benchmark gmm_samplers.py uses 2000 too), and draws 2,000 samples with 1, 2 or 4 network calls; the score is SW1 (2,000
directions) to an exact sample set divided by the two-sample floor (SW1 between that set and an
independent exact one, mean of three draws). The teacher's own sampler (Heun on the same 64
levels, 127 calls) is scored the same way. Both methods get the same number of optimiser steps in
all ("progressive" splits them over its rounds).

    python benchmarks/distill_gmm.py [--quick] [--steps N] [--calls 1 2 4] [--methods trajectory progressive]
    python benchmarks/distill_gmm.py --methods schedule --calls 2 4 --name distill_gmm_schedule   # learned levels

Writes benchmarks/results/distill_gmm.json (``--name``; ``_quick`` with --quick).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from _run_meta import run_meta
from sciffusion.data.batches import TensorPairs
from sciffusion.diffusion import CountingDenoiser, Denoiser, sample
from sciffusion.distill import DEFAULTS, distill
from sciffusion.nets import MLP
from sciffusion.testing import SlicedWasserstein, grid_mixture

SIGMA_MAX = 2000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d = 2 only, 4 calls, a short budget")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 80])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--methods", nargs="+", default=["trajectory", "progressive"])
    parser.add_argument("--batch-size", type=int, default=256, help="(distill's default)")
    parser.add_argument("--steps", type=int, default=4000, help="optimiser steps per student, all rounds together (distill's default for one run)")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="distill_gmm", help="results file benchmarks/results/NAME.json")
    args = parser.parse_args()
    if args.quick:
        args.dims, args.calls, args.steps = [2], [4], 3000
    torch.set_num_threads(args.threads)
    t_start, rows, meta = time.time(), [], run_meta()  # the load at the start of the run
    for d in args.dims:
        gm = grid_mixture(d, seed=1)
        data = TensorPairs(gm.sample(20000, torch.Generator().manual_seed(0)).float())
        ref = gm.sample(args.samples, torch.Generator().manual_seed(1))
        sw = SlicedWasserstein(ref, 2000)
        floors = [sw(gm.sample(args.samples, torch.Generator().manual_seed(s))) for s in (2, 3, 4)]
        floor = sum(floors) / 3
        teacher = CountingDenoiser(gm)
        x = sample(teacher, (args.samples, d), steps=64, method="heun", sigma_max=SIGMA_MAX,
                   generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        rows.append(dict(d=d, method="teacher (heun, 64 levels)", calls=teacher.nfe, sw=sw(x), floor=floor,
                         ratio=sw(x) / floor, train_s=0.0))
        print(f"\nd = {d}: floor {floor:.4f} ({', '.join(f'{f:.4f}' for f in floors)}); teacher heun 64 levels "
              f"{teacher.nfe} calls: SW/floor {rows[-1]['ratio']:.2f}", flush=True)
        for calls in args.calls:
            for method in args.methods:
                if method == "schedule" and calls < 2:
                    continue  # one call of the teacher's own network is its denoised mean
                rounds = int(math.log2(64 / calls))
                steps = args.steps if method == "trajectory" else max(1, args.steps // rounds)
                t0 = time.time()
                if method == "schedule":  # the exact denoiser itself on learned levels, at distill's schedule defaults
                    st = distill(gm, data, calls=calls, method=method, progress=False, threads=args.threads,
                                 sigma_max=SIGMA_MAX)
                    steps = DEFAULTS["schedule"]["steps"]
                else:
                    student = Denoiser(MLP(d, width=256, depth=4), sigma_data=float(data.x.std()))
                    st = distill(gm, data, calls=calls, method=method, student=student, steps=steps, progress=False,
                                 batch_size=args.batch_size, threads=args.threads, sigma_max=SIGMA_MAX)
                train_s = time.time() - t0
                counted = CountingDenoiser(st)
                with torch.no_grad():
                    x = sample(counted, (args.samples, d), generator=torch.Generator().manual_seed(5), **st.sampler)
                rows.append(dict(d=d, method=method, calls=counted.nfe, steps=steps * (1 if method != "progressive" else rounds),
                                 sw=sw(x), floor=floor, ratio=sw(x) / floor, train_s=train_s))
                print(f"  {method:12s} {calls} call(s): SW/floor {rows[-1]['ratio']:.2f}  (train {train_s:.0f} s)", flush=True)
    out = Path(__file__).parent / "results" / (f"{args.name}_quick.json" if args.quick else f"{args.name}.json")
    out.write_text(json.dumps({"meta": {**meta, "wall_s": time.time() - t_start}, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
