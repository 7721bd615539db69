"""A reliable physics reference on the two-scale Lorenz-96, and the statistical baselines beside it.

Regime fixed from the literature before any emulator sees it (issue 22): truth = two-scale
Lorenz-96, K=8, J=32, h=1, b=c=10, F=20 (Arnold et al. 2013; Wilks 2005); forecast model = the
one-scale model with a cubic closure and additive AR(1) noise fitted to a separate truth run
(:func:`sciffusion.systems.fit_closure`, seed 100; it reproduces Arnold et al.'s table 1).

1. Training initial times (truth seed 101): pick the noise scheme (additive or multiplicative
   AR(1)), its amplitude and time-scale factors and the initial perturbation from a small grid so that the 31-member spread-skill ratio is closest to 1
   at its worst lead (``max_lead |log SSR|``), then check 0.9-1.1 at every lead.
2. Held-out initial times (truth seed 200, another trajectory): the tuned physics-31 ensemble from
   :func:`sciffusion.systems.simulate`, and rows for the 2 raw seeds (members 0-1),
   Gaussian-around-seeds and EMOS fitted on the training times (31 draws each; exact Gaussian CRPS
   too), plus exchangeability diagnostics (physics split in halves, EMOS-31 vs physics-31).

    OMP_NUM_THREADS=1 python benchmarks/seeds_lorenz96_two_scale.py            # ~15 min on 1 free core
    OMP_NUM_THREADS=1 python benchmarks/seeds_lorenz96_two_scale.py --quick    # smoke run

Writes benchmarks/results/seeds_lorenz96_two_scale.json. No emulator is trained here.
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
from sciffusion.emulators import EMOS, GaussianAroundSeeds, ensemble_skill, raw_seeds  # noqa: E402
from sciffusion.emulators.skill import format_per_lead, format_table  # noqa: E402
from sciffusion.systems import Lorenz96TwoScale, StochasticLorenz96, fit_closure, simulate  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "seeds_lorenz96_two_scale.json"
PERTURBATIONS = (0.0, 0.05, 0.1)  # initial perturbation of X
TIME_FACTORS = (0.5, 1.0, 2.0)  # x the AR(1) time scale -dt / log(phi)
# noise schemes of Arnold et al. (2013): additive (sigma, phi fitted here) and multiplicative (their
# table's sigma = 0.469, phi = 0.94 as starting values), with the factors on sigma tried for each
SCHEMES = {"additive": (0.7, 0.8, 0.9, 1.0, 1.2), "multiplicative": (0.5, 0.7, 1.0, 1.4, 2.0)}
MULTIPLICATIVE_START = {"sigma": 0.469, "phi": 0.94}


def ssr_by_lead(ens: xr.DataArray, truth: xr.DataArray) -> np.ndarray:
    return sm.spread_skill_ratio(ens, truth, reduce_dims=["init_time", "k"]).isel(lead_time=slice(1, None)).values


def run_ensemble(model: StochasticLorenz96, x0: torch.Tensor, members: int, perturbation: float, n_leads: int,
                 lead_steps: int, seed: int) -> np.ndarray:
    """All initial times at once (one generator: for tuning only) -> (init, lead, member, k)."""
    g = torch.Generator().manual_seed(seed)
    x = model.perturb(x0.repeat_interleave(members, 0), g, perturbation)
    traj = model.integrate(x, n_leads, lead_steps, generator=g)[..., : model.k]
    return traj.reshape(x0.shape[0], members, n_leads + 1, model.k).transpose(1, 2).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-init", type=int, default=100, help="initial times for training and for test (each)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0, meta = time.time(), run_meta()  # the load at the start of the run
    n_init = 6 if args.quick else args.n_init
    setup = {"n_members": 31, "n_leads": 10, "lead_interval": 0.2, "init_interval": 1.0, "spinup": 5.0, "progress": False}
    truth = Lorenz96TwoScale()
    fit = fit_closure(truth, n_traj=8, duration=5.0 if args.quick else 25.0, seed=100)
    base = StochasticLorenz96(coefficients=fit["coefficients"], phi=fit["phi"], sigma=fit["sigma"])
    print("closure fit:", json.dumps(fit))

    train = simulate(truth, forecast_system=base, n_init=n_init, seed=101, **setup)
    y_train = train.x_truth
    x0 = torch.from_numpy(y_train.isel(lead_time=0).values)
    steps = round(setup["lead_interval"] / base.dt)
    tuning = {}
    grid = [(sc, f, p, t) for sc, fs in SCHEMES.items() for f, p, t in itertools.product(fs, PERTURBATIONS, TIME_FACTORS)]
    for scheme, f, p, t in grid:
        start = MULTIPLICATIVE_START if scheme == "multiplicative" else {"sigma": base.sigma, "phi": base.phi}
        model = StochasticLorenz96(coefficients=base.coefficients, phi=start["phi"] ** (1 / t), sigma=f * start["sigma"],
                                   multiplicative=scheme == "multiplicative")
        ens = xr.DataArray(run_ensemble(model, x0, 31, p, setup["n_leads"], steps, seed=1), dims=train.x.dims,
                           coords={"init_time": train.init_time, "lead_time": train.lead_time})
        ssr = ssr_by_lead(ens, y_train)
        tuning[f"{scheme}/{f}/{p}/{t}"] = {"scheme": scheme, "noise_factor": f, "perturbation": p, "time_factor": t,
                                           "sigma": model.sigma, "phi": model.phi, "ssr_by_lead": ssr.round(4).tolist(),
                              "worst": float(np.abs(np.log(ssr)).max()), "train_ens": ens}
    best = min(tuning.values(), key=lambda r: r["worst"])
    choice = {k: best[k] for k in ("scheme", "noise_factor", "perturbation", "time_factor", "sigma", "phi")}
    print("tuning (train):", {k: (v["ssr_by_lead"][0], v["ssr_by_lead"][-1], round(v["worst"], 3)) for k, v in tuning.items()})
    print("chosen:", choice, "train SSR by lead:", best["ssr_by_lead"])
    tuned = StochasticLorenz96(coefficients=base.coefficients, phi=choice["phi"], sigma=choice["sigma"],
                               multiplicative=choice["scheme"] == "multiplicative")
    train_ens = best["train_ens"]

    test = simulate(truth, forecast_system=tuned, n_init=n_init, seed=200, perturbation=choice["perturbation"], **setup)
    phys, y = test.x.isel(lead_time=slice(1, None)), test.x_truth.isel(lead_time=slice(1, None))
    tr_seeds, tr_y = raw_seeds(train_ens, 2).isel(lead_time=slice(1, None)), y_train.isel(lead_time=slice(1, None))
    seeds = raw_seeds(phys, 2)
    gauss, emos = GaussianAroundSeeds().fit(tr_seeds, tr_y), EMOS().fit(tr_seeds, tr_y)
    clim = {"clim_mean": fit["x_mean"], "clim_std": fit["x_std"]}
    ens_rows = {"physics 31": phys, "2 raw seeds": seeds, "Gaussian around seeds 31": gauss.generate(seeds, 31),
                "EMOS 31": emos.generate(seeds, 31)}
    rows = {k: ensemble_skill(v, y, **clim) for k, v in ens_rows.items()}
    exact = {"Gaussian around seeds": float(gauss.crps(seeds, y)), "EMOS": float(emos.crps(seeds, y))}
    print(format_table(rows))
    print(format_per_lead(rows, "crps"))
    print(format_per_lead(rows, "ssr"))
    print("exact Gaussian CRPS:", exact)

    half = {"physics 0-15 vs 16-30": (phys.isel(member=slice(0, 16)), phys.isel(member=slice(16, None))),
            "EMOS 31 vs physics 31": (ens_rows["EMOS 31"], phys),
            "Gaussian 31 vs physics 31": (ens_rows["Gaussian around seeds 31"], phys)}
    exch = {}
    for name, (a, b) in half.items():
        hist = sm.member_rank_histogram(a, b, reduce_dims="all")
        ed = sm.energy_distance(a, b, event_dims="k", reduce_dims=["init_time"], n_permutations=199, seed=0)
        exch[name] = {"rank_flatness": float(sm.flatness(hist)),
                      "spread_ratio_by_lead": sm.spread_ratio(a, b, reduce_dims=["init_time", "k"]).round(4).values.tolist(),
                      "energy_distance_by_lead": ed.energy_distance.round(4).values.tolist(),
                      "p_value_by_lead": ed.p_value.values.tolist()}
        print(name, {k: v for k, v in exch[name].items()})

    test_ssr = rows["physics 31"]["per_lead"]
    checks = {"physics31_ssr_0.9_1.1_every_lead_test": all(0.9 <= r["ssr"] <= 1.1 for r in test_ssr.values()),
              "physics31_ssr_0.9_1.1_every_lead_train": all(0.9 <= s <= 1.1 for s in best["ssr_by_lead"])}
    print("checks:", checks)
    for r in tuning.values():
        r.pop("train_ens")
    RESULTS.parent.mkdir(exist_ok=True)
    out = RESULTS.with_name(RESULTS.stem + "_quick.json") if args.quick else RESULTS
    out.write_text(json.dumps({
        "setup": {**setup, "n_init_train": n_init, "n_init_test": n_init, "train_seed": 101, "test_seed": 200,
                  "closure_fit_seed": 100, "truth": truth.params(), "forecast_model": tuned.params()},
        "closure_fit": fit, "tuning": tuning, "choice": choice, "rows": rows, "exact_gaussian_crps": exact,
        "emos_coefficients": {k: v.to_dict()["data_vars"] for k, v in emos.params.items()},
        "gaussian_sigma": gauss.params["x"]["sigma"].values.tolist(), "exchangeability": exch, "checks": checks,
        "wall_s": time.time() - t0, **meta}, indent=1, default=float))
    print(f"wrote {out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
