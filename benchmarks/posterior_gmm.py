"""Posterior samplers against the exact posterior of the MCGdiff Gaussian-mixture benchmark.

Problems (Cardoso et al. 2024, via ``sciffusion.testing.mcg_problem``): 25 unit-covariance
components with means (-8i, -8j, -8i, -8j, ...), i, j in -2..2, weights xi^2; A a Gaussian matrix
with singular values replaced by sorted U(0, 1) draws; sigma_y = u * max singular value. Problem
``rep`` of cell (d, d_y) uses seed ``100 * (3 * i_d + i_dy) + rep`` with i_d, i_dy the positions
of d in (8, 80, 800) and of d_y in (1, 2, 4).

Metric: sliced Wasserstein-1 with ``--directions`` random directions between ``--samples`` method
samples and exact posterior samples ``E1``; reported divided by the floor SW(E1, E2) of two
independent exact sets (about 1, within 0.3-1.5, is what an exact sampler scores). Rows: the
floor itself, ``prior`` (exact prior samples, the sampler that ignores y), DPS / PiGDM / MMPS at
an equal budget of denoiser evaluations per sample (forward passes + vector-Jacobian products,
``--budget``) inside ``--sampler`` (default DDIM with eta = 1; the deterministic Heun ODE does
much worse with these approximate guidances on multimodal posteriors) and twisted SMC at 16, 64, 256 and 1024 particles with the same budget per particle.
All with the exact denoiser, float64, sigma_max = 2000 (well above the data scale).

    python benchmarks/posterior_gmm.py --dims 8 80 --problems 5          # what fits on a laptop
    python benchmarks/posterior_gmm.py                                    # the full grid (hours on CPU)

Prints a table per cell and writes benchmarks/results/posterior_gmm.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from sciffusion.inverse import Linear, sample
from sciffusion.testing import SlicedWasserstein, mcg_problem

DIMS, DYS = (8, 80, 800), (1, 2, 4)


def methods(d_y: int, budget: int, particles: list[int], kernel: str = "gaussian",
            sampler: str = "ddim") -> list[tuple[str, str, dict, int, int]]:
    """(label, method, options, steps, evaluations per sample) at about ``budget`` evaluations.

    The guidance methods run inside ``sampler``: ``ddim`` (eta = 1, one denoiser call per step)
    or ``heun`` (2 S - 1 calls for S steps). DPS and PiGDM add one VJP per call, MMPS
    ``cg_iters + 1`` (exact solve: cg_iters = d_y). SMC makes one call and d_y + 1 VJPs per step
    (moment-matched twist). Every method uses sigma_data = 1 (the component scale) for its
    isotropic variances (PiGDM's r^2, DPS's effective variance, the SMC kernel)."""
    out = []
    for label, method, opts, per_call in (("DPS zeta=1", "dps", {}, 2), ("PiGDM", "pigdm", {}, 2),
                                          (f"MMPS cg={d_y}", "mmps", {"cg_iters": d_y}, d_y + 2)):
        opts = dict(opts, sampler=sampler)
        if sampler == "heun":
            steps = max(2, round((budget / per_call + 1) / 2))
            out.append((f"{label} heun", method, opts, steps, (2 * steps - 1) * per_call))
        else:
            steps = max(2, round(budget / per_call))
            out.append((f"{label} {sampler}", method, opts, steps, steps * per_call))
    smc_steps = max(2, round(budget / (d_y + 2)))
    for k in particles:
        out.append((f"SMC N={k}", "smc", {"particles": k, "kernel": kernel}, smc_steps, smc_steps * (d_y + 2)))
    return out


def run_cell(d: int, d_y: int, rep: int, args) -> list[dict]:
    seed = 100 * (3 * DIMS.index(d) + DYS.index(d_y)) + rep
    prior, a, y, noise_std, _ = mcg_problem(d, d_y, seed)
    post = prior.posterior(a, y, noise_std)
    n, nd = args.samples, args.directions
    e1 = post.sample(n, torch.Generator().manual_seed(1))
    sw_e1 = SlicedWasserstein(e1, nd)  # the directions and e1's sorted projections, once per problem
    floor = sw_e1(post.sample(n, torch.Generator().manual_seed(2)))
    rows = [dict(d=d, d_y=d_y, seed=seed, method="floor", sw=floor, ratio=1.0, evals=0, steps=0, wall_s=0.0),
            dict(d=d, d_y=d_y, seed=seed, method="prior (ignores y)", evals=0, steps=0, wall_s=0.0,
                 sw=sw_e1(prior.sample(n, torch.Generator().manual_seed(3))))]
    rows[1]["ratio"] = rows[1]["sw"] / floor
    for label, method, opts, steps, evals in methods(d_y, args.budget, args.particles, args.smc_kernel, args.sampler):
        if args.methods and not any(label.lower().startswith(m.lower()) for m in args.methods):
            continue
        t0 = time.perf_counter()
        x = sample(prior, Linear(a), y, noise_std=noise_std, method=method, n_members=n, steps=steps,
                   sigma_max=args.sigma_max, dtype=torch.float64, generator=torch.Generator().manual_seed(5 + rep),
                   **opts)
        wall = time.perf_counter() - t0
        sw = sw_e1(x)
        row = dict(d=d, d_y=d_y, seed=seed, method=label, sw=sw, ratio=sw / floor, evals=evals, steps=steps,
                   wall_s=wall, noise_std=noise_std)
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
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--directions", type=int, default=10_000)
    parser.add_argument("--budget", type=int, default=400, help="denoiser evaluations (fwd + VJP) per sample")
    parser.add_argument("--particles", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--sampler", default="ddim", choices=["ddim", "heun", "euler", "stochastic"],
                        help="sampler the guidance methods run in (ddim: eta = 1)")
    parser.add_argument("--smc-kernel", default="gaussian", choices=["gaussian", "ddpm"])
    parser.add_argument("--methods", nargs="*", help="only these method labels (prefixes, e.g. SMC MMPS)")
    parser.add_argument("--sigma-max", type=float, default=2000.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "posterior_gmm.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    all_rows = []
    for d in args.dims:
        for d_y in args.dys:
            rows = [r for rep in range(args.problems) for r in run_cell(d, d_y, rep, args)]
            all_rows += rows
            print(f"\nd = {d}, d_y = {d_y}: {args.problems} problems, {args.samples} samples, "
                  f"{args.directions} directions (SW/floor: mean, median, max)")
            print(f"{'method':20s} {'SW mean':>8s} {'ratio mean':>10s} {'median':>7s} {'max':>7s} {'evals':>6s} "
                  f"{'steps':>5s} {'s/problem':>9s}")
            for label in dict.fromkeys(r["method"] for r in rows):
                sel = [r for r in rows if r["method"] == label]
                ratios = [r["ratio"] for r in sel]
                print(f"{label:20s} {statistics.mean(r['sw'] for r in sel):8.4f} {statistics.mean(ratios):10.2f} "
                      f"{statistics.median(ratios):7.2f} {max(ratios):7.2f} {sel[0]['evals']:6d} {sel[0]['steps']:5d} "
                      f"{statistics.mean(r['wall_s'] for r in sel):9.2f}")
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"args": vars(args), "rows": all_rows}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
