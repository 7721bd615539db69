"""SDA-style smoothing of Lorenz-96 trajectories: sciffusion.assimilate.smooth against DAPPER's EnKS.

Setting: Lorenz-96, 40 variables, F = 8, RK4 dt = 0.05 (one state every 0.05). Observations: every
4th variable (10 of 40) every 2nd state (every 0.1), Gaussian noise std 1 (R = I). Both methods start
from climatology: sciffusion's prior is climatological by construction; DAPPER's initial ensemble is
N(climatological mean, climatological variance), the statistics of the prior's training runs.

sciffusion: a window prior (``train_window_prior``: windows of W states, the default PeriodicConv1d
backbone and Trainer settings, trained on 64 runs of 1,000 states on one CPU thread for a fixed wall
budget) composed over the whole trajectory by SDA's scheme and sampled with ``smooth`` (MMPS guidance).
Peers: DAPPER's ensemble Kalman smoother ``EnKS('Sqrt', N=40, Lag, infl, rot=True)`` (``Lag = 0`` is
the EnKF-Sqrt filter) and the localised ``LETKF(N=40, infl, loc_rad)`` filter. Knobs (W and sampler settings;
the EnKS's Lag and inflation, the LETKF's inflation and radius) are chosen on a
validation trajectory by RMSE and the test trajectory is scored once. Scores over all states but the
first (time 0, which DAPPER never assesses): RMSE of the ensemble mean, spread (rmv), spread-skill
(finite-ensemble corrected) and CRPS, through ``sciffusion.assimilate.cycle_scores`` and ``summary``.

    # 1. one prior per window length (each a separate process, one thread, a wall budget)
    OMP_NUM_THREADS=1 python benchmarks/assimilate_smoother_lorenz96.py train --window 5 --seconds 1080
    OMP_NUM_THREADS=1 python benchmarks/assimilate_smoother_lorenz96.py train --window 9 --seconds 1080
    # 2. choose on the validation trajectory, score the test trajectory (truth seed 2) once
    OMP_NUM_THREADS=1 python benchmarks/assimilate_smoother_lorenz96.py evaluate --windows 5 9
    # 3. the same choices (read from that JSON) on test truths 2, 3, 4
    OMP_NUM_THREADS=1 python benchmarks/assimilate_smoother_lorenz96.py evaluate --test-seeds 2 3 4 \
        --validation benchmarks/results/assimilate_smoother_lorenz96.json \
        --out benchmarks/results/assimilate_smoother_lorenz96_seeds.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _run_meta import run_meta  # noqa: E402

from sciffusion.assimilate import WindowPrior, cycle_scores, smooth, summary, train_window_prior  # noqa: E402
from sciffusion.diffusion import Denoiser  # noqa: E402
from sciffusion.inverse import Mask  # noqa: E402
from sciffusion.metrics import crps_ensemble  # noqa: E402
from sciffusion.nets import build_net  # noqa: E402
from sciffusion.systems.base import member_generator  # noqa: E402
from sciffusion.systems.lorenz96 import Lorenz96  # noqa: E402

NX, DT, OBS_EVERY_VAR, OBS_EVERY_STEP, NOISE = 40, 0.05, 4, 2, 1.0
JJ = np.arange(0, NX, OBS_EVERY_VAR)
RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "assimilate_smoother_lorenz96.json"
PRIORS = Path(__file__).resolve().parents[1] / "runs" / "sda_priors"


# ------------------------------------------------------------------ training
def train(args):
    torch.set_num_threads(1)
    meta, start = run_meta(), time.perf_counter()
    prior = train_window_prior(Lorenz96(k=NX), window=args.window, steps=args.steps, n_trajectories=64, length=1000,
                               seed=0, progress=False, threads=1, max_seconds=args.seconds)
    wall = time.perf_counter() - start
    PRIORS.mkdir(exist_ok=True)
    torch.save({"state": prior.denoiser.state_dict(), "net": prior.denoiser.net.config, "window": prior.window,
                "mean": prior.mean, "std": prior.std, "layout": list(prior.layout), "dt": prior.dt,
                "history": prior.history[-1:], "steps": len(prior.history), "wall_s": wall, "meta": meta,
                "losses": [h["loss"] for h in prior.history]},
               PRIORS / f"window{args.window}.pt")
    print(f"window {args.window}: {len(prior.history)} steps in {wall:.0f} s, last loss {prior.history[-1]['loss']:.4f}")


def load_prior(window: int) -> tuple[WindowPrior, dict]:
    saved = torch.load(PRIORS / f"window{window}.pt", weights_only=False)
    net = build_net({"name": "PeriodicConv1d", "kwargs": saved["net"]})
    den = Denoiser(net)
    den.load_state_dict(saved["state"])
    den.eval().requires_grad_(False)
    prior = WindowPrior(den, saved["window"], (NX,), saved["mean"], saved["std"], tuple(saved["layout"]), saved["dt"],
                        ("k",), {"k": np.arange(NX)}, {"name": "x"})
    info = {k: saved[k] for k in ("steps", "wall_s", "meta")}
    losses = np.asarray(saved["losses"])
    info["final_loss_mean_last_500"] = float(losses[-500:].mean())
    return prior, info


# ------------------------------------------------------------------ truth, observations, scores
def truth_and_obs(length: int, seed: int):
    """A truth run of ``length`` states (after 20 time units of spin-up), observations at states 2, 4, ...
    of every 4th variable with N(0, NOISE^2) noise."""
    model = Lorenz96(k=NX)
    x = model.advance(model.initial_state(1, member_generator(seed, 0)), 400)
    traj = model.integrate(x, length - 1, 1)[0]
    obs_k = np.arange(OBS_EVERY_STEP, length, OBS_EVERY_STEP)
    noise = torch.randn(len(obs_k), len(JJ), generator=member_generator(seed, 1), dtype=torch.float64)
    y = traj[obs_k][:, JJ] + NOISE * noise
    return traj.numpy(), obs_k, y.numpy()


def score(ens: np.ndarray, traj: np.ndarray) -> dict:
    """cycle_scores / summary of an ensemble ``(L - 1, N, NX)`` on states 1..L-1."""
    times = DT * np.arange(1, len(traj))
    ens_x = xr.DataArray(ens, dims=("time", "member", "k"), coords={"time": times})
    truth = xr.DataArray(traj[1:], dims=("time", "k"), coords={"time": times})
    fair = float(crps_ensemble(ens_x, truth, member_dim="member", fair=True, reduce_dims="all"))
    return {**summary(cycle_scores(ens_x, truth)), "crps_fair": fair}


# ------------------------------------------------------------------ sciffusion
def run_ours(prior, traj, obs_k, y, members, seed, options):
    times = DT * np.arange(len(traj))
    obs = xr.DataArray(y, dims=("time", "site"), coords={"time": times[obs_k], "site": JJ})
    op = Mask(torch.as_tensor(np.isin(np.arange(NX), JJ)))
    start = time.perf_counter()
    out = smooth(prior, obs, operator=op, noise_std=NOISE, times=times, n_members=members, seed=seed, **options)
    wall = time.perf_counter() - start
    ens = out.transpose("time", "member", "k").values[1:]
    return {**score(ens, traj), "wall_s": wall}


# ------------------------------------------------------------------ DAPPER
_RECORD: list = []


def run_dapper(method, traj, obs_k, y, clim_mean, clim_var, seed, n=40, **kw):
    import dapper as dpr
    import dapper.da_methods as da
    import dapper.mods as modelling
    import dapper.stats
    from dapper.mods.Lorenz96 import sakov2008
    from dapper.mods.utils import partial_Id_Obs
    from dapper.tools.localization import nd_Id_localization

    assess = dapper.stats.Stats.assess

    def recording(self, k, ko=None, faus=None, E=None, w=None, mu=None, Cov=None):
        if k >= 1 and "u" in (faus or ("u" if ko is None else "au")):
            _RECORD.append((k, np.array(E)))
        return assess(self, k, ko, faus, E, w, mu, Cov)

    dapper.stats.Stats.assess = recording
    try:
        tseq = modelling.Chronology(dt=DT, dko=OBS_EVERY_STEP, K=len(traj) - 1, BurnIn=0)
        assert np.array_equal(tseq.kko, obs_k), (tseq.kko[:5], obs_k[:5])
        obs = partial_Id_Obs(NX, JJ)
        obs["noise"] = modelling.GaussRV(C=NOISE**2, M=len(JJ))
        obs["localizer"] = nd_Id_localization((NX,), (2,), JJ)
        x0 = modelling.GaussRV(mu=clim_mean, C=clim_var)
        hmm = modelling.HiddenMarkovModel(sakov2008.Dyn, obs, tseq, x0)
        xp = da.EnKS("Sqrt", N=n, rot=True, **kw) if method == "EnKS" else da.LETKF(N=n, rot=True, **kw)
        _RECORD.clear()
        dpr.set_seed(seed)
        start = time.perf_counter()
        try:
            xp.assimilate(hmm, traj, y, liveplots=False)
        except Exception as exc:  # a diverged smoother is a result, not a crash of the benchmark
            return {"rmse": float("nan"), "error": f"{type(exc).__name__}: {exc}"[:200]}
        wall = time.perf_counter() - start
    finally:
        dapper.stats.Stats.assess = assess
    ks = [k for k, _ in _RECORD]
    assert ks == list(range(1, len(traj))), ks[:5]
    ens = np.stack([e for _, e in _RECORD])
    assert ens.shape == (len(traj) - 1, n, NX), ens.shape
    return {**score(ens, traj), "wall_s": wall}


# ------------------------------------------------------------------ protocol
DEFAULTS: dict = {}  # smooth()'s public defaults: MMPS, DDIM (eta = 1), 50 steps, cg_iters 5, sigma_max 10 sqrt(d)
OURS_GRID = [DEFAULTS, {"sampler": "heun", "steps": 16, "cg_iters": 3}]
PEER_GRID = ([("EnKS", {"Lag": lag, "infl": infl}) for lag in (0, 4, 8) for infl in (1.02, 1.05, 1.1, 1.2)]
             + [("LETKF", {"infl": infl, "loc_rad": r}) for infl in (1.02, 1.05, 1.1) for r in (2, 4)])


def fmt(r):
    return {k: round(v, 4) for k, v in r.items() if isinstance(v, float)}


def validate(args, priors, clim_mean, clim_var, out):
    """Every knob of both sides on the validation trajectory (truth seed 1), recorded in ``out``."""
    val = truth_and_obs(args.val_length, seed=1)
    for name, cfg in PEER_GRID:
        r = run_dapper(name, *val, clim_mean, clim_var, seed=3000, **cfg)
        out["validation"]["dapper"].append({"method": name, "settings": cfg, **r})
        print("validation", name, cfg, fmt(r), flush=True)
    save(args.out, out)
    for w, (prior, _) in priors.items():
        for options in OURS_GRID:
            r = run_ours(prior, *val, args.members, seed=11, options=options)
            out["validation"]["sciffusion"].append({"window": w, "options": options, **r})
            print("validation sciffusion", w, options or "defaults", fmt(r), flush=True)
            save(args.out, out)


def best_of(rows):
    return min(rows, key=lambda r: np.nan_to_num(r["rmse"], nan=np.inf))


def evaluate(args):
    torch.set_num_threads(1)
    meta, start = run_meta(), time.perf_counter()
    priors = {w: load_prior(w) for w in args.windows}
    clim_mean = float(priors[args.windows[0]][0].mean.mean()) * np.ones(NX)
    clim_var = float((priors[args.windows[0]][0].std ** 2).mean())
    setting = {"nx": NX, "dt": DT, "observed_variables": JJ.tolist(), "observation_every_states": OBS_EVERY_STEP,
               "noise_std": NOISE, "members_sciffusion": {"validation": args.members, "test": args.test_members},
               "members_enks": 40, "validation": {"length": args.val_length, "truth_seed": 1},
               "test": {"length": args.test_length, "truth_seeds": args.test_seeds},
               "initial_ensemble_enks": {"mean": clim_mean[0], "var": clim_var}}
    out = {"meta": meta, "setting": setting, "priors": {str(w): info for w, (_, info) in priors.items()},
           "validation": {"sciffusion": [], "dapper": []}}
    if args.validation is None:
        validate(args, priors, clim_mean, clim_var, out)
    else:  # the validation record of an earlier run (same priors, same validation trajectory)
        out["validation"] = json.loads(args.validation.read_text())["validation"]
        out["validation_from"] = str(args.validation)
    vd = out["validation"]["dapper"]
    best = best_of(out["validation"]["sciffusion"])
    peers = {"DAPPER EnKS-Sqrt N=40 (smoother)": best_of(r for r in vd if r["method"] == "EnKS" and r["settings"]["Lag"]),
             "DAPPER EnKF-Sqrt N=40 (EnKS Lag 0, filter)": best_of(r for r in vd if r["method"] == "EnKS"
                                                                 and not r["settings"]["Lag"]),
             "DAPPER LETKF N=40 (filter)": best_of(r for r in vd if r["method"] == "LETKF")}
    out["chosen"] = {"sciffusion": {"window": best["window"], "options": best["options"]},
                     **{name: {"method": r["method"], "settings": r["settings"]} for name, r in peers.items()}}
    out["status"], rows = "test running", []

    def record(seed, name, settings, result):
        rows.append((seed, name, settings, result))
        out["test"] = [{"truth_seed": sd, "method": m, "settings": st, **r} for sd, m, st, r in rows]
        save(args.out, out)
        print("test", seed, name, settings, fmt(result), flush=True)

    prior = priors[best["window"]][0]
    for seed in args.test_seeds:
        test = truth_and_obs(args.test_length, seed=seed)
        for name, r in peers.items():
            record(seed, name, str(r["settings"]), run_dapper(r["method"], *test, clim_mean, clim_var,
                                                              seed=3998 + seed, **r["settings"]))
        record(seed, "sciffusion (defaults)", f"window {best['window']}, smooth() defaults",
               run_ours(prior, *test, args.test_members, seed=10 + seed, options=DEFAULTS))
        if best["options"] != DEFAULTS:
            record(seed, "sciffusion (chosen)", f"window {best['window']}, {best['options']}",
                   run_ours(prior, *test, args.test_members, seed=10 + seed, options=best["options"]))
    out["wall_s"] = time.perf_counter() - start
    keys = ("rmse", "spread", "spread_skill", "crps", "crps_fair", "wall_s")
    out["test_mean_over_seeds"] = {}
    print("| method | settings | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for name in dict.fromkeys(m for _, m, _, _ in rows):
        mine = [(st, r) for _, m, st, r in rows if m == name]
        mean = {k: float(np.mean([r[k] for _, r in mine])) for k in keys}
        lo_hi = {k: (min(r[k] for _, r in mine), max(r[k] for _, r in mine)) for k in keys}
        out["test_mean_over_seeds"][name] = {"settings": mine[0][0], "mean": mean, "min_max": lo_hi}
        print(f"| {name} | {mine[0][0]} | " + " | ".join(f"{mean[k]:.3f} ({lo_hi[k][0]:.3f}-{lo_hi[k][1]:.3f})"
                                                        for k in keys) + " |")
    out["status"] = "complete"
    save(args.out, out)
    print("wrote", args.out)


def save(path: Path, out: dict) -> None:
    """Write the record so far (a run stopped midway keeps its validation)."""
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="phase", required=True)
    tr = sub.add_parser("train")
    tr.add_argument("--window", type=int, default=5)
    tr.add_argument("--steps", type=int, default=200_000)
    tr.add_argument("--seconds", type=float, default=1080)
    ev = sub.add_parser("evaluate")
    ev.add_argument("--windows", type=int, nargs="+", default=[5, 9])
    ev.add_argument("--val-length", type=int, default=101)
    ev.add_argument("--test-length", type=int, default=201)
    ev.add_argument("--members", type=int, default=8)
    ev.add_argument("--test-members", type=int, default=8)
    ev.add_argument("--test-seeds", type=int, nargs="+", default=[2])
    ev.add_argument("--validation", type=Path, default=None,
                    help="reuse the validation record (and so the choices) of an earlier run's JSON")
    ev.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.phase == "train":
        train(args)
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
