"""SEEDS on 2-D Kolmogorov flow (32 x 32 on CPU): emulated and post-processed ensembles from 2 seeds.

Truth: KolmogorovFlow(n=32, Re=100, drag=0.1). Forecast model (model error): Re=80, drag=0.12.
Physics ensembles: 31 members from perturbed truth states (vorticity perturbation 0.1), leads
1..4 time units. The emulator (UNet2d, emulation mode) and the post-processing emulator
(truth_fraction 0.5) are trained here on other initial times, their temperature calibrated on a
third set, then conditioned on 2 seeds they generate 31 and 256 members. The grid is 32 x 32
rather than 64 x 64 to fit CPU time (a 64 x 64 UNet costs more per member on CPU than the
64 x 64 pseudo-spectral solver); the cost per member of solver and emulator is measured in the
same process with the same threads.

    python benchmarks/seeds_kolmogorov.py                    # ~15-20 min on 1 core
    python benchmarks/seeds_kolmogorov.py --quick            # smoke run
    python benchmarks/seeds_kolmogorov.py --net eof --rank 256 --cond-rank 256 --width 384 --depth 3 \
        --batch-size 256 --train-steps 4000 --n-train 80 --n-init 16   # latent (EOF) emulators, ~12 min on 1 core

Writes benchmarks/results/seeds_kolmogorov.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import xarray as xr

from sciffusion.emulators import EnsembleEmulator, calibrate_spread, ensemble_skill
from sciffusion.emulators.skill import format_per_lead, format_table
from sciffusion.systems import KolmogorovFlow, simulate

RESULTS = Path(__file__).parent / "results" / "seeds_kolmogorov.json"
SETUP = {"n": 32, "members": 31, "n_leads": 4, "lead_interval": 1.0, "perturbation": 0.1, "spinup": 20.0,
         "truth": {"reynolds": 100.0, "drag": 0.1}, "forecast": {"reynolds": 80.0, "drag": 0.12}}


TEMPERATURES = (0.6, 0.8, 1.0, 1.25, 1.6, 2.0, 2.5)  # the spread knob's grid (wider than the library default)


def kolmogorov_ensembles(n_init: int, seed: int, members: int | None = None) -> xr.Dataset:
    """Physics ensembles of the imperfect model with the truth: vorticity (init_time, lead_time, member, y, x)."""
    s = SETUP
    truth, model = KolmogorovFlow(n=s["n"], **s["truth"]), KolmogorovFlow(n=s["n"], **s["forecast"])
    ds = simulate(truth, forecast_system=model, n_members=members or s["members"], n_init=n_init, n_leads=s["n_leads"],
                  lead_interval=s["lead_interval"], perturbation=s["perturbation"], spinup=s["spinup"], seed=seed)
    return ds.isel(lead_time=slice(1, None)).drop_vars("chunk_done", errors="ignore").load()


def cached(directory, name: str, n_init: int, seed: int) -> xr.Dataset:
    """``kolmogorov_ensembles(n_init, seed)``, kept as netCDF in ``directory`` (reused when it exists)."""
    if directory is None:
        return kolmogorov_ensembles(n_init, seed)
    path = Path(directory) / f"{name}_{n_init}_{seed}.nc"
    if path.exists():
        return xr.open_dataset(path).load()
    ds = kolmogorov_ensembles(n_init, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path)
    return ds


def net_spec(args) -> dict:
    """``--net unet``: UNet2d [32, 64] on the grid; ``--net eof``: latent diffusion, an MLP on EOF coefficients."""
    if args.net == "eof":
        return {"name": "EOFMLP", "kwargs": {"rank": args.rank, "cond_rank": args.cond_rank, "width": args.width,
                                             "depth": args.depth}}
    return {"kwargs": {"channels": [32, 64]}}


def train(ds, val, mode, steps, *, net: dict, batch_size: int, lr: float, sampler_steps: int, device=None, log=print):
    t0 = time.perf_counter()
    emu = EnsembleEmulator.fit(ds, mode=mode, truth_fraction=0.5, steps=steps, batch_size=batch_size, lr=lr,
                               warmup_steps=100, ema_decay=0.995, net=net, device=device)
    emu.sampler["steps"] = sampler_steps
    obs = val[["vorticity_truth"]].rename(vorticity_truth="vorticity") if mode == "post-processing" \
        else val[["vorticity"]].isel(member=2, drop=True)
    cal = calibrate_spread(emu, val[["vorticity"]].isel(member=[0, 1]), obs, n_members=8, batch_size=256, device=device,
                           values=TEMPERATURES)
    log(f"{mode}: trained {steps} steps in {time.perf_counter() - t0:.0f} s (loss {emu.history[-1]['loss']:.3f}); {cal}")
    return emu


def cpu_cost_per_member(emu: EnsembleEmulator, seeds: xr.Dataset, threads: int, members: int, repeats: int = 5) -> dict:
    """Seconds per member forecast (all leads) on CPU with ``threads`` threads, solver and emulator
    timed back to back in this process (best of ``repeats``): the solver runs the 31-member ensemble of the forecast model
    from one state over the leads; the emulator generates 31 members for the same leads."""
    s = SETUP
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = KolmogorovFlow(n=s["n"], **s["forecast"])
        x = model.step(model.initial_state(members, torch.Generator().manual_seed(0)), 100)
        steps = round(s["lead_interval"] / model.dt)
        cpu = EnsembleEmulator(emu.denoiser.to("cpu"), emu.coder, mode=emu.mode, sampler=emu.sampler)
        solver = emulator = float("inf")
        for _ in range(repeats):  # best of several, interleaved: the machine is shared
            t0 = time.perf_counter()
            model.integrate(x, s["n_leads"], steps)
            solver = min(solver, (time.perf_counter() - t0) / members)
            t0 = time.perf_counter()
            cpu.generate(seeds.isel(init_time=[0]), members, batch_size=256, device="cpu")
            emulator = min(emulator, (time.perf_counter() - t0) / members)
    finally:
        torch.set_num_threads(old)
    return {"solver_s_per_member": solver, "emulator_s_per_member": emulator, "emulator_over_solver": emulator / solver,
            "threads": threads, "repeats": repeats, "sampler": dict(emu.sampler)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=40)
    p.add_argument("--n-init", type=int, default=12, help="test initial times")
    p.add_argument("--big", type=int, default=256)
    p.add_argument("--train-steps", type=int, default=1500)
    p.add_argument("--threads", type=int, default=1, help="CPU threads for the cost comparison")
    p.add_argument("--device", default=None, help="torch device for training and scoring runs (cost is always CPU)")
    p.add_argument("--net", choices=("unet", "eof"), default="unet",
                   help="emulator backbone: UNet2d [32, 64] on the grid, or latent diffusion on EOFs (EOFMLP)")
    p.add_argument("--rank", type=int, default=256, help="--net eof: EOFs of the member deviation")
    p.add_argument("--cond-rank", type=int, default=256, help="--net eof: EOFs of the condition")
    p.add_argument("--width", type=int, default=512, help="--net eof: MLP width")
    p.add_argument("--depth", type=int, default=4, help="--net eof: MLP residual blocks")
    p.add_argument("--batch-size", type=int, default=32, help="training batch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--sampler-steps", type=int, default=8, help="Heun steps of the emulators")
    p.add_argument("--cache", help="directory to keep the simulated ensembles in (reused when present)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.device is None:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.n_train, args.n_init, args.big, args.train_steps = 4, 2, 16, 20
    m = SETUP["members"]
    t0 = time.perf_counter()
    data = cached(args.cache, "train", args.n_train, 101)
    val = cached(args.cache, "val", 4 if not args.quick else 2, 102)
    print(f"simulated training data in {time.perf_counter() - t0:.0f} s", flush=True)
    kw = {"net": net_spec(args), "batch_size": args.batch_size, "lr": args.lr, "sampler_steps": args.sampler_steps}
    emu = train(data, val, "emulation", args.train_steps, device=args.device, **kw)
    post = train(data, val, "post-processing", args.train_steps, device=args.device, **kw)
    phys = cached(args.cache, "test", args.n_init, 200)
    truth = phys["vorticity_truth"]
    seeds = phys[["vorticity"]].isel(member=[0, 1])
    clim = {"clim_mean": float(data["vorticity_truth"].mean()), "clim_std": float(data["vorticity_truth"].std())}
    ensembles, cost = {"2 seeds": seeds["vorticity"], f"physics ({m})": phys["vorticity"]}, {}
    for label, model in (("emulated", emu), ("post-processed", post)):
        for n in (m, args.big):
            t0 = time.perf_counter()
            ensembles[f"{label} ({n})"] = model.generate(seeds, n, seed=1, batch_size=1024, device=args.device)["vorticity"]
            cost[f"{label} ({n})"] = (time.perf_counter() - t0) / (args.n_init * n)
            print(f"{label} ({n}): {cost[f'{label} ({n})'] * args.n_init * n:.0f} s on {args.device or 'cpu'}", flush=True)
    rows = {name: ensemble_skill(e, truth, **clim) for name, e in ensembles.items()}
    cpu = cpu_cost_per_member(emu, seeds, args.threads, m)
    solver_per_member, emu_per_member = cpu["solver_s_per_member"], cpu["emulator_s_per_member"]
    phys_row, emu_row, post_row = rows[f"physics ({m})"], rows[f"emulated ({m})"], rows[f"post-processed ({m})"]
    checks = {"emulated_crps_ratio": emu_row["crps"] / phys_row["crps"],
              "emulated_crps_within_5pct_of_physics": abs(emu_row["crps"] / phys_row["crps"] - 1) <= 0.05,
              "post_processed_crps_ratio": post_row["crps"] / phys_row["crps"],
              "post_processed_lower_crps_than_physics": post_row["crps"] < phys_row["crps"],
              "post_processed_ssr_closer_to_1": abs(post_row["ssr"] - 1) < abs(phys_row["ssr"] - 1),
              "emulator_over_solver_cost": emu_per_member / solver_per_member,
              "member_cost_at_most_a_tenth": emu_per_member <= solver_per_member / 10}
    print(f"\nKolmogorov flow {SETUP['n']}x{SETUP['n']} SEEDS benchmark: {args.n_init} initial times x "
          f"{len(truth.lead_time)} leads {truth.lead_time.values.tolist()}; truth Re=100 drag 0.1, model Re=80 drag 0.12")
    print(format_table(rows))
    print()
    print(format_per_lead(rows, "crps"))
    print(f"\nCPU cost per member forecast ({len(truth.lead_time)} leads, {args.threads} thread(s)): solver "
          f"{solver_per_member * 1e3:.1f} ms, emulator {emu_per_member * 1e3:.1f} ms "
          f"(emulator/solver = {emu_per_member / solver_per_member:.2f})")
    print("targets:", json.dumps(checks, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"setup": {**SETUP, "n_train": args.n_train, "n_init_test": args.n_init,
                                         "train_steps": args.train_steps, "quick": args.quick,
                                         "net": net_spec(args), "batch_size": args.batch_size, "lr": args.lr,
                                         "emulation_sampler": emu.sampler, "post_sampler": post.sampler},
                               "scores": rows, "cost": {**cpu, "scoring_runs_s_per_member": cost,
                                                        "scoring_device": args.device or "cpu"},
                               "targets": checks}, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
