"""SEEDS on Lorenz-96: emulated and post-processed ensembles from 2 seeds vs the 31-member physics ensemble.

Truth: Lorenz-96 (K=40, F=8). Forecast model: F=8.5 with stochastic forcing 0.3 (model error; --forcing-error
and --noise-std choose another, and both emulators are then trained for it unless given).
Physics ensembles: 31 members of the forecast model from perturbed truth states (perturbation 0.1),
leads 0.25 .. 1.5 model time units. Test initial times come from a truth trajectory that neither
training (seed 101) nor calibration (seed 102) saw. Rows: the 2 seeds alone, the 31-member
physics ensemble, the emulation-mode emulator (the checkpoint shipped in sciffusion/assets, built
by ``python -m sciffusion.emulators.pretrain``) generating 31 and 256 members, and the
post-processing-mode emulator (trained here with the same recipe, truth_fraction 0.5) generating 31
and 256. Cost per member (one forecast over all leads) of the emulator and of the solver is
measured in the same process with the same thread count.

    python benchmarks/seeds_lorenz96.py                      # ~10 min post-processing training + ~6 min scoring on 1 core
    python benchmarks/seeds_lorenz96.py --post-checkpoint runs/l96_post   # reuse a trained model
    python benchmarks/seeds_lorenz96.py --quick              # smoke run

Writes benchmarks/results/seeds_lorenz96.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from sciffusion.emulators import EnsembleEmulator, ensemble_skill
from sciffusion.emulators.pretrain import (L96_SETUP, default_checkpoint, l96_setup, lorenz96_ensembles,
                                            pretrain_lorenz96)
from sciffusion.emulators.skill import format_per_lead, format_table
from sciffusion.metrics import crps_gaussian

RESULTS = Path(__file__).parent / "results" / "seeds_lorenz96.json"
TEST_SEED = 200


def targets(rows: dict, m: int) -> dict:
    phys, emu = rows[f"physics ({m})"], rows[f"emulated ({m})"]
    post = rows[f"post-processed ({m})"]
    return {
        "emulated_crps_within_5pct_of_physics": abs(emu["crps"] / phys["crps"] - 1) <= 0.05,
        "emulated_crps_ratio": emu["crps"] / phys["crps"],
        "post_processed_lower_crps_than_physics": post["crps"] < phys["crps"],
        "post_processed_crps_ratio": post["crps"] / phys["crps"],
        "post_processed_ssr_closer_to_1": abs(post["ssr"] - 1) < abs(phys["ssr"] - 1),
    }


def gaussian_oracles(ens: xr.DataArray, truth: xr.DataArray, k: int) -> dict:
    """CRPS of Gaussian forecasts that know more than any emulator can: centred on the mean of the
    first ``k`` members (what an emulator sees) or of all members, with the spread factor chosen per
    lead *on the test set itself* to minimise CRPS. An emulator conditioned on ``k`` seeds that
    matched the full physics ensemble would have to beat the first of these by a wide margin: it
    measures how much the k-seed mean alone loses against the full ensemble mean."""
    sig = np.sqrt((ens.var("member", ddof=1)).mean([d for d in ens.dims if d not in ("member", "lead_time")]))
    out = {}
    for name, centre in ((f"gaussian oracle ({k}-seed mean)", ens.isel(member=slice(0, k)).mean("member")),
                         (f"gaussian oracle ({ens.sizes['member']}-member mean)", ens.mean("member"))):
        per_lead = []
        for lead in ens.lead_time.values:
            c, t, s0 = centre.sel(lead_time=lead), truth.sel(lead_time=lead), float(sig.sel(lead_time=lead))
            per_lead.append(min(float(crps_gaussian(c, f * s0, t).mean()) for f in np.linspace(0.3, 3.0, 55)))
        out[name] = {"crps": float(np.mean(per_lead)), "per_lead": per_lead}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-init", type=int, default=40, help="test initial times (default 40)")
    p.add_argument("--big", type=int, default=256, help="large emulated ensemble size (default 256)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: each checkpoint's)")
    p.add_argument("--checkpoint", default=None, help="emulation checkpoint (default: the shipped one)")
    p.add_argument("--post-checkpoint", default=None, help="post-processing checkpoint (default: train one)")
    p.add_argument("--post-out", default="runs/seeds_l96_post", help="where a trained post-processing model goes")
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--noise-std", type=float, default=None,
                   help="forecast-model stochastic forcing (default 0.3); another value trains both models here")
    p.add_argument("--test-seed", type=int, default=TEST_SEED,
                   help=f"seed of the test truth trajectory (default {TEST_SEED}; training uses 101, calibration 102)")
    p.add_argument("--forcing-error", type=float, default=None,
                   help="forecast model F - truth F (default 0.5); another value trains both models here")
    p.add_argument("--device", default=None, help="torch device for training and generation (cost is then not CPU)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.n_init, args.big, args.train_steps = 4, 32, 50
    m = L96_SETUP["members"]

    setup = l96_setup(args.forcing_error, args.noise_std)
    train_kw = dict(steps=args.train_steps, n_init=40 if args.quick else 400, progress=False, setup=setup, device=args.device)
    if setup and not args.checkpoint:
        emu = pretrain_lorenz96(None, mode="emulation", **train_kw)
    else:
        emu = EnsembleEmulator.load(args.checkpoint or default_checkpoint(), device=args.device)
    if args.post_checkpoint:
        post = EnsembleEmulator.load(args.post_checkpoint, device=args.device)
    else:
        t0 = time.perf_counter()
        post = pretrain_lorenz96(args.post_out, mode="post-processing", **train_kw)
        print(f"trained the post-processing model in {time.perf_counter() - t0:.0f} s -> {args.post_out}")
    k = emu.coder.n_seeds

    t0 = time.perf_counter()
    phys = lorenz96_ensembles(args.n_init, args.test_seed, setup=setup)
    solver_s = time.perf_counter() - t0
    truth = phys["x_truth"]
    seeds = phys[["x"]].isel(member=list(range(k)))
    clim = {"clim_mean": float(truth.mean()), "clim_std": float(truth.std())}

    ensembles, cost = {f"{k} seeds": seeds["x"], f"physics ({m})": phys["x"]}, {}
    for label, model in (("emulated", emu), ("post-processed", post)):
        for n in (m, args.big):
            t0 = time.perf_counter()
            ens = model.generate(seeds, n, steps=args.steps, seed=1, batch_size=2048 if args.device is None else 16384,
                                 device=args.device)
            dt = time.perf_counter() - t0
            ensembles[f"{label} ({n})"] = ens["x"]
            cost[f"{label} ({n})"] = dt / (args.n_init * n)
            print(f"{label} ({n}): {dt:.1f} s", flush=True)
    rows = {name: ensemble_skill(e, truth, **clim) for name, e in ensembles.items()}

    # cost per member forecast (all leads), same process and threads
    t0 = time.perf_counter()
    lorenz96_ensembles(args.n_init, args.test_seed + 1, setup=setup)
    solver_s = min(solver_s, time.perf_counter() - t0)
    solver_per_member = solver_s / (args.n_init * m)
    emu_per_member = cost[f"emulated ({args.big})"]
    cost_table = {"solver_s_per_member": solver_per_member, "emulator_s_per_member": emu_per_member,
                  "emulator_device": args.device or "cpu",
                  "emulator_over_solver": emu_per_member / solver_per_member, "threads": args.threads,
                  "sampler": dict(emu.sampler),
                  "per_run": cost}
    checks = targets(rows, m)
    oracles = gaussian_oracles(phys["x"], truth, k)

    noise = setup.get("noise_std", L96_SETUP["noise_std"])
    f_model = 8.0 + setup.get("forcing_error", L96_SETUP["forcing_error"])
    print(f"\nLorenz-96 SEEDS benchmark: {args.n_init} initial times x {len(truth.lead_time)} leads "
          f"{truth.lead_time.values.tolist()} x 40 sites; truth F=8, forecast model F={f_model:g} + noise {noise}")
    print(format_table(rows))
    print()
    print(format_per_lead(rows, "crps"))
    print()
    print(format_per_lead(rows, "ssr"))
    print(f"\ncost per member forecast ({len(truth.lead_time)} leads, {args.threads} thread(s), emulator on "
          f"{args.device or 'cpu'}): solver "
          f"{solver_per_member * 1e3:.3f} ms, emulator {emu_per_member * 1e3:.3f} ms "
          f"(emulator/solver = {emu_per_member / solver_per_member:.1f})")
    print("information limit (Gaussian forecasts with the best spread per lead, picked on the test set):")
    for name, o in oracles.items():
        print(f"  {name:34s} CRPS {o['crps']:.4f} ({o['crps'] / rows[f'physics ({m})']['crps']:.2f}x physics)")
    print("targets:", json.dumps(checks, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"setup": {**L96_SETUP, **setup, "n_init_test": args.n_init, "test_seed": args.test_seed,
                                         "emulation_checkpoint": emu.checkpoint, "post_checkpoint": post.checkpoint,
                                         "emulation_sampler": emu.sampler, "post_sampler": post.sampler,
                                         "quick": args.quick},
                               "scores": rows, "information_limit": oracles, "cost": cost_table,
                               "targets": checks}, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
