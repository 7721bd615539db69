"""Posterior samplers against the exact posterior of the MCGdiff Gaussian-mixture benchmark.

Problems (Cardoso et al. 2024, via ``sciffusion.testing.mcg_problem``): 25 unit-covariance
components with means (-8i, -8j, -8i, -8j, ...), i, j in -2..2, weights xi^2; A a Gaussian matrix
with singular values replaced by sorted U(0, 1) draws; sigma_y = u * max singular value. Problem
``rep`` of cell (d, d_y) uses seed ``--seed-base + 100 * (3 * i_d + i_dy) + rep`` with i_d, i_dy the
positions of d in (8, 80, 800) and of d_y in (1, 2, 4). Seed bases: 10000 the test problems (scored
once), 20000 the validation problems the defaults were chosen on, 30000 tests/test_inverse_bars.py.

Metric: sliced Wasserstein-1 with ``--directions`` random directions between ``--samples`` method
samples and exact posterior samples ``E1``; reported divided by the floor SW(E1, E2) of two
independent exact sets (an exact sampler scores 0.3-1.5). Rows: the floor, ``prior`` (exact prior
samples, the sampler that ignores y), then **the public defaults of ``sciffusion.inverse.sample``**
(float32, derived ``sigma_max``, every option at its default; only ``steps``, ``n_members`` and
``particles`` are set): twisted SMC at ``--particles`` with ``--steps`` steps, then DPS, PiGDM and
MMPS at the same denoiser evaluations per sample (forward passes + vector-Jacobian products). Each
``--variants`` entry adds a row that deviates from the defaults, marked ``*``:
``smc:kernel=gaussian,sigma_max=2000,dtype=float64`` (``scale=S``: ``sigma_max = S * data_scale``).

    python benchmarks/posterior_gmm.py --dims 8 --problems 5 --out benchmarks/results/posterior_gmm_defaults_d8.json \
        --variants smc:kernel=ddpm,sigma_max=80 smc:kernel=gaussian,sigma_max=2000,dtype=float64
    python benchmarks/posterior_gmm.py --dims 80 --problems 2 --particles 16 1000 --guidance mmps --directions 2000 \
        --variants smc:kernel=ddpm,sigma_max=80 --out benchmarks/results/posterior_gmm_defaults_d80.json
    (and --seed-base 10002 --problems 3 ... --out benchmarks/results/posterior_gmm_defaults_d80_more.json)
    python benchmarks/posterior_gmm.py                                    # the full grid (hours on CPU)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _run_meta import run_meta

from sciffusion.inverse import Linear, sample
from sciffusion.inverse.api import data_scale
from sciffusion.testing import SlicedWasserstein, mcg_problem

DIMS, DYS = (8, 80, 800), (1, 2, 4)
# evaluations per step: SMC one forward pass, d_y VJPs (moment-matched twist), one for its guidance
# and one for the Tweedie kernel's probe; guidance one forward pass and one VJP, MMPS cg_iters + 1
PER_STEP = {"smc": lambda dy, o: dy + 3 - (o.get("kernel", "tweedie") in ("ddpm", "gaussian")),
            "dps": lambda dy, o: 2, "pigdm": lambda dy, o: 2, "mmps": lambda dy, o: o.get("cg_iters", 5) + 2}


def parse_variant(text: str) -> tuple[str, dict]:
    """``"smc:kernel=gaussian,dtype=float64"`` -> ``("smc", {"kernel": "gaussian", "dtype": torch.float64})``."""
    method, _, rest = text.partition(":")
    opts = {}
    for item in filter(None, rest.split(",")):
        k, v = item.split("=")
        opts[k] = getattr(torch, v) if k == "dtype" else v if k == "kernel" else float(v)
    return method, opts


def rows_for(d_y: int, args) -> list[tuple[str, str, dict, int]]:
    """(label, method, options, steps): the defaults first, then the deviating variants (label ``*``)."""
    budget = args.steps * PER_STEP["smc"](d_y, {})
    out = [(f"SMC N={k}", "smc", {"particles": k}, args.steps) for k in args.particles]
    out += [(name, m, {}, max(2, round(budget / PER_STEP[m](d_y, {})))) for name, m in
            (("DPS", "dps"), ("PiGDM", "pigdm"), ("MMPS", "mmps")) if m in args.guidance]
    for text in args.variants:
        m, opts = parse_variant(text)
        steps = max(2, round(budget / PER_STEP[m](d_y, opts))) if m != "smc" else args.steps
        k = [args.particles[-1]] if m == "smc" else [None]
        out += [(f"{m.upper()}{f' N={n}' if n else ''} {text.partition(':')[2]} *", m,
                 {**opts, **({"particles": n} if n else {})}, steps) for n in k]
    return out


def run_cell(d: int, d_y: int, rep: int, args) -> list[dict]:
    seed = args.seed_base + 100 * (3 * DIMS.index(d) + DYS.index(d_y)) + rep
    prior, a, y, noise_std, _ = mcg_problem(d, d_y, seed)
    post = prior.posterior(a, y, noise_std)
    n, nd = args.samples, args.directions
    e1 = post.sample(n, torch.Generator().manual_seed(1))
    sw_e1 = SlicedWasserstein(e1, nd)  # the directions and e1's sorted projections, once per problem
    floor = sw_e1(post.sample(n, torch.Generator().manual_seed(2)))
    base = dict(d=d, d_y=d_y, seed=seed, noise_std=noise_std)
    prior_sw = sw_e1(prior.sample(n, torch.Generator().manual_seed(3)))
    rows = [dict(base, method="floor", sw=floor, ratio=1.0, evals=0, steps=0, wall_s=0.0),
            dict(base, method="prior (ignores y)", sw=prior_sw, ratio=prior_sw / floor, evals=0, steps=0, wall_s=0.0)]
    for label, method, opts, steps in rows_for(d_y, args):
        opts = dict(opts)
        if "scale" in opts:
            opts["sigma_max"] = opts.pop("scale") * data_scale(prior, (d,), torch.float64)
        t0 = time.perf_counter()
        x = sample(prior, Linear(a), y, noise_std=noise_std, guidance=method, n_members=n, steps=steps,
                   generator=torch.Generator().manual_seed(5 + rep), **opts)
        sw = sw_e1(x)
        row = dict(base, method=label, sw=sw, ratio=sw / floor, steps=steps, wall_s=time.perf_counter() - t0,
                   evals=steps * PER_STEP[method](d_y, opts))
        if method == "smc":
            row["log_z"] = [float(v) for v in x.info.log_z]
            row["min_ess_fraction"] = float(x.info.ess.min()) / x.info.particles
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    parser.add_argument("--dys", type=int, nargs="+", default=list(DYS))
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--seed-base", type=int, default=10_000, help="10000 test, 20000 validation")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--directions", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=100, help="SMC steps; the guidance rows get its evaluations")
    parser.add_argument("--particles", type=int, nargs="+", default=[16, 64, 256, 1000])
    parser.add_argument("--guidance", nargs="*", default=["dps", "pigdm", "mmps"], help="guidance rows at defaults")
    parser.add_argument("--variants", nargs="*", default=[], help="deviating rows, e.g. smc:kernel=ddpm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "posterior_gmm.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    meta, t_start, all_rows = run_meta(), time.perf_counter(), []
    for d in args.dims:
        for d_y in args.dys:
            rows = [r for rep in range(args.problems) for r in run_cell(d, d_y, rep, args)]
            all_rows += rows
            print(f"\nd = {d}, d_y = {d_y}: {args.problems} problems, {args.samples} samples, "
                  f"{args.directions} directions (SW/floor: mean, median, max; * deviates from the defaults)")
            print(f"{'method':44s} {'ratio mean':>10s} {'median':>7s} {'max':>7s} {'evals':>6s} {'steps':>5s} "
                  f"{'s/problem':>9s}")
            for label in dict.fromkeys(r["method"] for r in rows):
                sel = [r for r in rows if r["method"] == label]
                ratios = [r["ratio"] for r in sel]
                print(f"{label:44s} {statistics.mean(ratios):10.2f} {statistics.median(ratios):7.2f} "
                      f"{max(ratios):7.2f} {sel[0]['evals']:6d} {sel[0]['steps']:5d} "
                      f"{statistics.mean(r['wall_s'] for r in sel):9.2f}", flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"meta": {**meta, "wall_s": time.perf_counter() - t_start},
                                                  "args": vars(args), "rows": all_rows}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
