"""GEE and GPP on the reliable Kolmogorov reference (issue 22): emulated and post-processed 31 from 2 seeds, 64 x 64.

The regime and the physics ensemble are those of ``seeds_kolmogorov_reliable.py`` (truth
KolmogorovFlow(n=64, Re=100, drag=0.1); forecast model Re=80, drag=0.12, float32, dt 1/25, plus the
AR(1) vorticity forcing of StochasticKolmogorovFlow); its tuned settings (sigma, tau, initial
perturbation) are *read* from ``results/seeds_kolmogorov_reliable.json`` and never re-tuned here.

Data (no test initial time is seen before scoring):
- training: ``--n-train`` initial times of the reference's training truth trajectory (``simulate``
  truth seed 101; the trajectory is one run, so its first 24 times are the reference's), 31 members
  of the tuned model from the reference's own one-generator ensemble (``run_ensemble``, the seed of
  the chosen setting): the first 24 times are the reference's training ensemble bit for bit, so the
  Gaussian-around-seeds and EMOS fits are rebuilt exactly;
- validation: ``--n-val`` initial times of a new truth trajectory (seed ``--val-seed``, 150),
  31 members from ``simulate`` with the tuned model; used for the training-step choice and the
  temperature only;
- test: the reference's 60 held-out times (``simulate`` truth seed 200, same call), scored once.

GEE: ``EnsembleEmulator`` in emulation mode (targets: other physics members); GPP: post-processing
mode (the library's default ``truth_fraction`` 0.5). Both at ``fit``'s public defaults with the
latent backbone ``net={"name": "EOFMLP"}`` at its library defaults (128/128 EOFs, width 512, depth 4)
instead of the UNet2d default (far too slow on CPU at 64 x 64); the number of training steps is
chosen on validation among ``--train-steps`` (the first is fit's default 2000; resumed, not
retrained) and the temperature is calibrated on validation (``calibrate_spread``; GEE against a
held-out physics member, GPP against the truth; the grid widened only if the default one does not
reach spread-skill 1). Protocol pieces are imported from ``seeds_lorenz96_two_scale_emulate.py``.

Scores (test, once): every row beside physics-31, CRPS / physics-31 overall and per lead with a 95%
bootstrap interval over initial times (paired), spread ratio to physics, spread-skill, rank
flatness of physics members 2-16 among 14 emulated members vs among physics members 17-30, the
energy-distance permutation test, and the 2-seed information limit (a Gaussian on the 2-seed mean
with the CRPS-optimal spread per lead chosen on the test set: an oracle).

    OMP_NUM_THREADS=1 python benchmarks/seeds_kolmogorov_reliable_emulate.py --cache /tmp/h4k_cache
        # optionally first: --data-only, then --only GEE and --only GPP side by side (same --cache), then the line above
    OMP_NUM_THREADS=1 python benchmarks/seeds_kolmogorov_reliable_emulate.py --quick   # smoke run (32 x 32, tiny)

Writes benchmarks/results/seeds_kolmogorov_reliable_emulate.json and .png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).parent))
import sciffusion.metrics as sm  # noqa: E402
from _run_meta import run_meta  # noqa: E402
from cost_kolmogorov import bootstrap_ratio  # noqa: E402
from seeds_kolmogorov_reliable import PERTURBATIONS, SIGMAS, model, run_ensemble  # noqa: E402
from seeds_kolmogorov_reliable import RESULTS as REFERENCE  # noqa: E402
from seeds_kolmogorov_reliable import SETUP as REF  # noqa: E402
from seeds_lorenz96 import gaussian_oracles  # noqa: E402
from seeds_lorenz96_two_scale_emulate import K, M, exchangeability, physics_split, plot, targets, train_and_select  # noqa: E402
from sciffusion.emulators import EMOS, EnsembleEmulator, GaussianAroundSeeds, ensemble_skill, raw_seeds  # noqa: E402
from sciffusion.emulators.skill import format_per_lead, format_table  # noqa: E402
from sciffusion.systems import KolmogorovFlow, simulate  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "seeds_kolmogorov_reliable_emulate.json"
V, GRID, LEADS = "vorticity", ("y", "x"), {"lead_time": slice(1, None)}
N_REF_TRAIN = 24  # the reference's training times (its Gaussian / EMOS fit)


def ensemble_seed(choice: dict) -> int:
    """The generator seed of the reference's training ensemble for its chosen setting (1 + grid index)."""
    grid = [(tau, s, p) for tau, sigmas in SIGMAS.items() for s, p in itertools.product(sigmas, PERTURBATIONS)]
    return 1 + grid.index((choice["tau"], choice["sigma"], choice["perturbation"]))


def split(truth, forecast, n_init: int, seed: int, members: int, perturbation: float) -> xr.Dataset:
    """``simulate`` as the reference calls it (lead 0 kept)."""
    sim = {"n_leads": REF["n_leads"], "lead_interval": REF["lead_interval"], "spinup": REF["spinup"], "progress": False}
    ds = simulate(truth, forecast_system=forecast, n_members=members, n_init=n_init, perturbation=perturbation,
                  seed=seed, **sim)
    return ds.drop_vars(["chunk_done", "valid_time"], errors="ignore").load()


def training_data(truth, tuned, n: int, n_init: int, perturbation: float, seed: int) -> xr.Dataset:
    """Truth seed 101 (one trajectory) and the reference's one-generator 31-member ensemble on it."""
    tr = split(truth, model(0.0, n=n), n_init, REF["train_seed"], 1, REF["reference_perturbation"])  # its truth only
    y = tr[f"{V}_truth"]
    ens = run_ensemble(tuned, torch.from_numpy(y.isel(lead_time=0).values), M, perturbation, seed=seed)
    coords = {k: tr[k] for k in ("init_time", "lead_time", *GRID)}
    return xr.Dataset({V: (tr[V].dims, ens.astype(np.float32)), f"{V}_truth": y},  # float32 values: exact
                      coords={**coords, "member": np.arange(M)})


def cached(cache: Path | None, name: str, make) -> xr.Dataset:
    if cache is not None and (cache / f"{name}.nc").exists():
        return xr.load_dataset(cache / f"{name}.nc")
    t0 = time.perf_counter()
    ds = make()
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        ds.to_netcdf(cache / f"{name}.nc")
    print(f"simulated {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return ds


def crps_by_init_lead(ens: xr.DataArray, y: xr.DataArray) -> np.ndarray:
    c = sm.crps_ensemble(ens.astype(np.float64), y.astype(np.float64), reduce_dims=list(GRID))
    return np.asarray(c.transpose("init_time", "lead_time").values, dtype=float)


def ratios_to_physics(ens: dict, y: xr.DataArray) -> dict:
    """CRPS / physics-31, overall and per lead, with a paired 95% bootstrap interval over initial times."""
    c = {k: crps_by_init_lead(v, y) for k, v in ens.items()}
    p = c["physics 31"]
    return {k: {"overall": bootstrap_ratio(a.mean(1), p.mean(1)),
                "by_lead": [bootstrap_ratio(a[:, j], p[:, j]) for j in range(a.shape[1])]} for k, a in c.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", type=int, default=96, help="training initial times (the first 24 are the reference's)")
    ap.add_argument("--n-val", type=int, default=16, help="validation initial times")
    ap.add_argument("--val-seed", type=int, default=150, help="truth seed of the validation trajectory")
    ap.add_argument("--n-test", type=int, default=60, help="held-out initial times (the reference's 60)")
    ap.add_argument("--train-steps", default="2000,4000", help="training-step candidates (first: fit's default)")
    for a in ("rank", "cond-rank", "width", "depth"):
        ap.add_argument(f"--{a}", type=int, default=None, help=f"EOFMLP {a} (default: the library's)")
    ap.add_argument("--n-perm", type=int, default=199, help="energy-distance permutations")
    ap.add_argument("--cache", default=None, help="directory keeping the simulations (reused when present)")
    ap.add_argument("--data-only", action="store_true", help="only simulate (into --cache) and stop")
    ap.add_argument("--only", choices=("GEE", "GPP"), help="train and select only this emulator (kept in --cache for the "
                                                            "scoring run: GEE and GPP can train side by side) and stop")
    ap.add_argument("--quick", action="store_true", help="smoke run: 32 x 32, tiny sizes (not a result)")
    args = ap.parse_args()
    meta, t_start = run_meta(), time.time()  # the load at the start of the run
    torch.set_num_threads(1)
    import sciffusion.training  # noqa: F401  (fail now, not after the simulations, if the library does not import)

    q, n = args.quick, REF["n"]
    candidates = [int(s) for s in args.train_steps.split(",")]
    net_kwargs = {k.replace("-", "_"): getattr(args, k.replace("-", "_")) for k in ("rank", "cond-rank", "width", "depth")}
    net_kwargs = {k: v for k, v in net_kwargs.items() if v is not None}
    if q:
        n, args.n_train, args.n_val, args.n_test, args.n_perm, candidates = 32, 6, 3, 3, 19, [30, 60]
        net_kwargs = {"rank": 16, "cond_rank": 16, "width": 64, "depth": 1}
    n_ref = min(N_REF_TRAIN, args.n_train)
    ref = json.loads(REFERENCE.read_text())
    choice = {k: ref["choice"][k] for k in ("tau", "sigma", "perturbation")}
    pert, ens_seed = choice["perturbation"], ensemble_seed(choice)
    truth, tuned = KolmogorovFlow(n=n, **REF["truth"]), model(choice["sigma"], choice["tau"], n)
    cache = None if args.cache is None else Path(args.cache + ("_quick" if q else ""))
    timing, log = {}, (lambda s: print(s, flush=True))

    t0 = time.perf_counter()
    train_full = cached(cache, f"train_n{n}_{args.n_train}_s{ens_seed}",
                        lambda: training_data(truth, tuned, n, args.n_train, pert, ens_seed))
    val_full = cached(cache, f"val_n{n}_{args.n_val}_{args.val_seed}",
                      lambda: split(truth, tuned, args.n_val, args.val_seed, M, pert))

    def test_data() -> xr.Dataset:
        return cached(cache, f"test_n{n}_{args.n_test}_{REF['test_seed']}",
                      lambda: split(truth, tuned, args.n_test, REF["test_seed"], M, pert))

    timing["simulate_s"] = time.perf_counter() - t0
    if args.data_only:
        test_data()
        log(f"data in {cache} ({timing['simulate_s']:.0f} s)")
        return
    train, val = train_full.isel(LEADS), val_full.isel(LEADS)
    log(f"training {dict(train.sizes)}, validation {dict(val.sizes)}")

    fit_kw = {"var": V, "net": {"name": "EOFMLP", "kwargs": net_kwargs}}
    emus, val_record = {}, {}
    tag = f"{args.n_train}_{args.n_val}_{args.val_seed}_{'-'.join(map(str, candidates))}_" + \
          "_".join(f"{k}{v}" for k, v in sorted(net_kwargs.items()))
    for label, mode in (("GEE", "emulation"), ("GPP", "post-processing")):
        if args.only not in (None, label):
            continue
        saved = None if cache is None else cache / f"emulator_{label}_{tag}"
        if saved is not None and (saved / "validation.json").exists():  # trained and selected by an --only run
            emus[label] = EnsembleEmulator.load(saved)
            val_record[label] = json.loads((saved / "validation.json").read_text())
            timing[f"{label}_train_select_s"] = val_record[label]["train_select_s"]
            log(f"{label}: loaded {saved}")
            continue
        t0 = time.perf_counter()
        run_dir = Path(__file__).parent.parent / "runs" / f"seeds_kolmogorov_reliable_emulate{'_quick' if q else ''}" / mode
        emu, steps, rec = train_and_select(mode, train, val, candidates, run_dir, log, **fit_kw)
        lat = emu.denoiser.net
        emus[label] = emu
        val_record[label] = {"chosen_steps": steps, "candidates": rec, "sampler": dict(emu.sampler),
                             "net_config": lat.config, "eof_explained": float(lat.explained),
                             "eof_cond_explained": float(lat.cond_explained), "train_select_s": time.perf_counter() - t0,
                             "load_average_at_start": meta["load_average_at_start"], "command": meta.get("command")}
        timing[f"{label}_train_select_s"] = time.perf_counter() - t0
        log(f"{label}: {steps} steps chosen; EOFs keep {float(lat.explained):.3f} / {float(lat.cond_explained):.3f}")
        if saved is not None:
            emu.save(saved)
            (saved / "validation.json").write_text(json.dumps(val_record[label], indent=1, default=float))
    if args.only:
        log(f"{args.only} kept in {saved} ({time.time() - t_start:.0f} s)")
        return

    # -- the test: the reference's held-out times, scored once ---------------------------------------
    t0 = time.perf_counter()
    test = test_data().isel(LEADS)  # simulated after training (or by --data-only)
    phys, y, seeds = test[V], test[f"{V}_truth"], test[[V]].isel(member=list(range(K)))
    ref_train = train.isel(init_time=slice(0, n_ref))
    tr_seeds = raw_seeds(ref_train[V].astype(np.float64), K)  # the reference fitted on float64 copies
    gauss, emos = GaussianAroundSeeds().fit(tr_seeds, ref_train[f"{V}_truth"]), EMOS().fit(tr_seeds, ref_train[f"{V}_truth"])
    emos_big = EMOS().fit(raw_seeds(train[V].astype(np.float64), K), train[f"{V}_truth"])
    raw = raw_seeds(phys, K)
    ens = {"physics 31": phys, "2 raw seeds": raw, "Gaussian around seeds 31": gauss.generate(raw, M),
           "EMOS 31": emos.generate(raw, M), f"EMOS 31 (fit on {args.n_train} times)": emos_big.generate(raw, M)}
    for label, emu in emus.items():
        ens[f"{label} 31"] = emu.generate(seeds, M, seed=1, batch_size=2048, progress=False)[V]
    timing["test_generate_s"] = time.perf_counter() - t0
    y_clim = train_full[f"{V}_truth"].isel(init_time=slice(0, n_ref))  # the reference's climatology (lead 0 too)
    clim = {"clim_mean": float(y_clim.mean()), "clim_std": float(y_clim.std())}
    rows = {k: ensemble_skill(v, y, **clim) for k, v in ens.items()}
    ref_names = {"physics 31": "physics 31 stochastic", "2 raw seeds": "2 raw seeds",
                 "Gaussian around seeds 31": "Gaussian around seeds 31", "EMOS 31": "EMOS 31"}
    reproduced = {k: [rows[k]["crps"], ref["rows"][r]["crps"]] for k, r in ref_names.items()}
    exact = {"Gaussian around seeds": float(gauss.crps(raw, y)), "EMOS": float(emos.crps(raw, y)),
             f"EMOS (fit on {args.n_train} times)": float(emos_big.crps(raw, y))}
    t0 = time.perf_counter()
    ratios = ratios_to_physics(ens, y)
    timing["bootstrap_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    exch = {name: exchangeability(ens[name], phys, args.n_perm, GRID)
            for name in ("GEE 31", "GPP 31", "EMOS 31", "Gaussian around seeds 31")}
    exch["physics 2-16 in physics 17-30"] = physics_split(phys, args.n_perm, GRID)
    timing["exchangeability_s"] = time.perf_counter() - t0
    oracles = gaussian_oracles(phys, y, K)
    checks = targets(rows, exch)
    checks["gee_crps_ratio_95pct"] = [ratios["GEE 31"]["overall"][k] for k in ("lo95", "hi95")]
    checks["gpp_crps_ratio_95pct"] = [ratios["GPP 31"]["overall"][k] for k in ("lo95", "hi95")]

    leads = [float(t) for t in y.lead_time.values]
    print(f"\nKolmogorov {n}x{n}, held-out: {args.n_test} initial times x leads {leads}")
    print(format_table(rows))
    for metric in ("crps", "ssr"):
        print(format_per_lead(rows, metric))
    print("CRPS / physics-31 [95% bootstrap over initial times], overall then by lead:")
    for k, r in ratios.items():
        cells = [r["overall"], *r["by_lead"]]
        print(f"  {k:34s} " + "  ".join(f"{c['ratio']:.3f} [{c['lo95']:.3f}, {c['hi95']:.3f}]" for c in cells))
    for name, e in exch.items():
        print(name, {k: v for k, v in e.items() if "histogram" not in k})
    limit = {k: round(v["crps"] / rows["physics 31"]["crps"], 4) for k, v in oracles.items()}
    for what, value in (("reproduced CRPS (here, reference)", reproduced), ("exact Gaussian CRPS", exact),
                        ("information limit (Gaussian, spread per lead picked on the test set) / physics-31", limit),
                        ("targets", json.dumps(checks, indent=1, default=float))):
        print(f"{what}:", value)

    out = RESULTS.with_name(RESULTS.stem + "_quick.json") if q else RESULTS
    png = out.with_suffix(".png")
    if q:  # a smoke run never touches the results directory
        out, png = Path("/tmp") / out.name, Path("/tmp") / png.name
    plot(exch, leads, png)
    out.write_text(json.dumps({
        "meta": meta, "library": sciffusion.__file__, "reference": REFERENCE.name, "physics_settings_from_reference": choice,
        "setup": {"n": n, "n_members": M, "n_seeds": K, "seed_members": list(range(K)),
                  "train": {"n_init": args.n_train, "truth_seed": REF["train_seed"], "ensemble": f"run_ensemble seed {ens_seed}",
                            "first_n_are_reference": n_ref},
                  "validation": {"n_init": args.n_val, "truth_seed": args.val_seed, "ensemble": "simulate"},
                  "test": {"n_init": args.n_test, "truth_seed": REF["test_seed"], "ensemble": "simulate (the reference's call)"},
                  "fit": {"defaults_except": {"net": fit_kw["net"], "steps": "chosen on validation"},
                          "train_steps_candidates": candidates},
                  "n_permutations": args.n_perm, "quick": q},
        "validation": val_record, "rows": rows, "crps_ratio_to_physics": ratios, "exact_gaussian_crps": exact,
        "reproduced_crps_vs_reference": reproduced, "exchangeability": exch, "information_limit_oracle_on_test": oracles,
        "targets": checks, "timing_s": timing, "plot": png.name, "wall_s": time.time() - t_start}, indent=1, default=float))
    print(f"wrote {out} and {png} ({time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
