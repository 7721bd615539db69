"""Downscaling the real OSTIA sea-surface temperature by a factor 3 (issue 9), on CPU.

Data: ``ostia_monthly.nc`` from the ``iris-sample-data`` wheel, monthly-mean OSTIA SST
``surface_temperature`` (K) April 2006 - September 2010 on 18 x 432 points (5S-4.4N, global
0-360 longitudes), NaN over land (26% of points). Coarse inputs are 3 x 3 block means over the
ocean points (6 x 144, :func:`~sciffusion.emulators.coarsen`).

Protocol (the test year is touched only once, at the end):

1. fit the :class:`~sciffusion.emulators.Downscaler` on 2006-04 .. 2008-12 (33 fields, 300 steps);
2. calibrate the DDIM ``(steps, eta)`` on 2009 (12 fields, 4 members, steps 16 or 32, eta 0 or 1):
   the pair whose spread-skill ratio is closest to 1 (:meth:`Downscaler.calibrate`);
3. train on for 100 more steps on 2006-04 .. 2009-12 (45 fields; the weights, their EMA and the
   normalisation/static constants of step 1 carry over) and keep the calibrated sampler
   (``--refit-steps 0`` scores the step-1 model instead). A full refit from scratch on
   2006-2009 would double the training time on CPU;
4. score on the 9 months of 2010, ocean points only (the metrics skip NaN with correct
   counts; the latitude band is +-5 degrees, so cos-latitude weights would change nothing):
   CRPS, RMSE of the ensemble mean, spread-skill ratio (with the sqrt((M+1)/M) correction) and
   rank-histogram flatness (KS distance from uniform, 0 = flat) of the ensemble; CRPS (= MAE)
   and RMSE of bicubic and nearest-neighbour upsampling; the fraction of land points that are
   NaN in every generated member (must be 1); training seconds and seconds per member.

What helps with 45 training fields, and what was tried (``--no-static`` / ``--no-roll`` ablations):

* the CorrDiff residual recipe of the Downscaler: the net only learns ``fine - bicubic``;
* a static channel, the time-mean bicubic residual of the *training* years on the fine grid
  (``Downscaler.fit(static=...)``): the part of the residual that comes back every month is
  given, not learnt from 45 samples. On its own, as a deterministic forecast ``bicubic +
  residual climatology`` (a row of the table), it already has the RMSE of the ensemble mean;
  what the diffusion model adds is a calibrated spread, hence the lower CRPS. Without the
  channel (``--no-static``) the 2010 scores were CRPS 0.0409, RMSE 0.0834, spread-skill 0.81
  (with it: 0.0406, 0.0798, 0.85);
* random longitude rolls of whole training items by multiples of the factor, applied jointly
  to the residual, the conditioning channels (interpolated field, land mask, static field)
  and the loss mask, so each item stays physically consistent (block means commute with rolls
  by whole blocks and the interpolation is periodic). At 300 steps they changed nothing
  measurable on 2009 (DDIM 8 steps, eta 0: spread-skill 0.677 with rolls, 0.672 without;
  CRPS 0.0443 and 0.0442 K); kept since they cost nothing;
* a small U-Net (16-32-64 channels, one block per level, no attention) and an EMA of the
  weights (decay 0.995 for a 400-step run);
* the sampler: 8 DDIM steps are under-dispersed here (spread-skill 0.57-0.68 on 2009), 16-32
  steps at eta 0 reach 0.8-0.9; Heun with 8 steps over-disperses (1.21) at a worse CRPS.

    python benchmarks/real_sst_downscaling.py            # 10-15 min on 1 thread
    python benchmarks/real_sst_downscaling.py --quick    # smoke run, ~1 min (no files written)

Writes benchmarks/results/real_sst_downscaling.json and real_sst_downscaling.png.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import sciffusion.metrics as sm
from sciffusion.data import open_dataset
from sciffusion.emulators import Downscaler, coarsen, upsample
from sciffusion.emulators.downscale_data import stack
from _run_meta import run_meta

RESULTS = Path(__file__).parent / "results"
VAR = "surface_temperature"
STATIC = "residual_climatology"
FACTOR = 3
NET = {"kwargs": {"channels": [16, 32, 64], "blocks_per_level": 1, "groups": 8}}


def ostia_path() -> str:
    import iris_sample_data

    return os.path.join(os.path.dirname(iris_sample_data.__file__), "sample_data", "ostia_monthly.nc")


def load() -> xr.Dataset:
    return open_dataset(ostia_path())[[VAR]].load()


def with_static(fine: xr.Dataset) -> xr.Dataset:
    """``fine`` plus the time-mean residual ``fine - bicubic(coarsen(fine))`` of these fields (NaN on land)."""
    valid = fine[VAR].notnull().all("time")
    up = upsample(coarsen(fine, FACTOR), FACTOR, method="bicubic", mask=valid)[VAR]
    clim = (fine[VAR] - up.values).mean("time")  # .values: the reconstructed coordinates differ by round-off
    clim.attrs = {"units": "K", "long_name": "mean fine-minus-bicubic residual of the training years"}
    return fine.assign({STATIC: clim})


class RolledTriples(torch.utils.data.Dataset):
    """Training items of the Downscaler, each rolled in longitude by a random multiple of ``shift`` (0: no roll).

    The residual ``x``, the conditioning channels ``cond`` (interpolated field, mask, static
    fields) and the loss ``mask`` of an item are rolled together, so an item stays a physically
    consistent (target, condition) pair on a rotated globe.
    """

    def __init__(self, x, cond, mask, shift: int, seed: int = 0):
        self.x, self.cond, self.mask, self.shift = x, cond, mask, shift
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self):
        return len(self.x)

    def batch(self, idx):
        if not self.shift:
            return {"x": self.x[idx], "cond": self.cond[idx], "mask": self.mask[idx]}
        n = self.x.shape[-1] // self.shift
        rolls = torch.randint(0, n, (len(idx),), generator=self.gen) * self.shift
        out = {"x": [], "cond": [], "mask": []}
        for i, r in zip(idx.tolist(), rolls.tolist()):
            for k in out:
                out[k].append(torch.roll(getattr(self, k)[i], r, dims=-1))
        return {k: torch.stack(v) for k, v in out.items()}

    def __getitem__(self, i):
        return self.batch(torch.tensor([i]))


def triples(model: Downscaler, fine: xr.Dataset, roll: bool, seed: int) -> RolledTriples:
    """The Downscaler's training items (residual, condition, loss mask) of ``fine``, rolled if ``roll``."""
    c = model.coder
    f = stack(fine, c.variables, c.sample_dim, c.grid_dims)
    up = c.upsample(stack(coarsen(fine, FACTOR), c.variables, c.sample_dim, c.grid_dims))
    x, mask = c.target(f, up)
    return RolledTriples(x, c.condition(up), mask, shift=FACTOR if roll else 0, seed=seed)


def fit(fine: xr.Dataset, *, static: bool, roll: bool, steps: int, batch_size: int, lr: float, ema_decay: float,
        seed: int = 0):
    """A Downscaler trained on ``fine``: ``(model, trainer, seconds)``.

    The same model, items and Trainer as ``Downscaler.fit``, with the items optionally rolled in
    longitude: ``fit(steps=0)`` builds the coder (normalisation, masks, static fields) and the
    initial net, then a Trainer trains it (and can go on with more data, see :func:`refit`).
    """
    from sciffusion.training import Trainer

    t0 = time.perf_counter()
    data = with_static(fine) if static else fine
    model = Downscaler.fit(data, [VAR], factor=FACTOR, static=[STATIC] if static else None, net=NET, seed=seed,
                           steps=0, batch_size=batch_size)
    items = triples(model, fine, roll, seed)
    trainer = Trainer(model.denoiser.requires_grad_(True).train(), items, batch_size=min(batch_size, len(items)),
                      lr=lr, warmup_steps=50, ema_decay=ema_decay, seed=seed, progress=False)
    trainer.fit(steps)
    model.denoiser = trainer.ema.eval().requires_grad_(False)
    model.history = trainer.history
    return model, trainer, time.perf_counter() - t0


def refit(model: Downscaler, trainer, fine: xr.Dataset, *, roll: bool, steps: int, batch_size: int, lr: float,
          ema_decay: float, seed: int = 1) -> float:
    """Go on training ``model`` (from ``trainer``'s current weights) for ``steps`` on ``fine``; seconds.

    The coder (normalisation constants, masks, static residual climatology) stays the one fitted
    on the first training years; only the weights see the added year.
    """
    from sciffusion.training import Trainer

    t0 = time.perf_counter()
    items = triples(model, fine, roll, seed)
    more = Trainer(trainer.model, items, batch_size=min(batch_size, len(items)), lr=lr, warmup_steps=10,
                   ema_decay=ema_decay, seed=seed, progress=False)
    more.ema.load_state_dict(trainer.ema.state_dict())
    more.fit(steps)
    model.denoiser = more.ema.eval().requires_grad_(False)
    model.history = trainer.history + more.history
    return time.perf_counter() - t0


def scores(fc: xr.DataArray, truth: xr.DataArray) -> dict:
    """Pooled scores of ``fc (time, member, lat, lon)`` over the valid (ocean) points of ``truth``."""
    fc, obs = fc.astype(np.float64), truth.astype(np.float64)
    out = {"members": int(fc.sizes["member"]), "crps": float(sm.crps_ensemble(fc, obs, reduce_dims="all")),
           "rmse": float(sm.rmse(fc, obs, reduce_dims="all"))}
    if fc.sizes["member"] > 1:
        comp = sm.spread_skill_ratio(fc, obs, reduce_dims="all", components=True)
        hist = sm.rank_histogram(fc, obs, reduce_dims="all").astype(float)
        out.update(spread=float(comp["spread"]), ssr=float(comp["ratio"]), rank_flatness=float(sm.flatness(hist)),
                   rank_histogram=hist.values.tolist())
    else:  # deterministic: CRPS = MAE, no spread
        out.update(spread=0.0, ssr=0.0, rank_flatness=float("nan"))
    return out


def add_uncertainty(rows: dict, forecasts: dict, truth: xr.DataArray, best: str, confidence: float = 0.9) -> dict:
    """Add to each row the ``confidence`` block-bootstrap interval of its CRPS along the test months
    (``crps_lo``, ``crps_hi``), and compare ``best`` with every other method: the CRPS difference
    with its paired interval (the same blocks for both), the CRPSS of ``best`` relative to it and
    the Diebold-Mariano p-value (HLN-corrected). Each month's CRPS is the mean over its ocean
    points (the mask is the same every month, so the months' mean is the pooled CRPS). Nine months
    give wide intervals: they bound what this table can tell apart, not the method's skill."""
    from sciffusion.metrics.uncertainty import block_bootstrap, diebold_mariano

    space = [d for d in truth.dims if d != "time"]
    monthly = {k: sm.crps_ensemble(fc.astype(np.float64), truth.astype(np.float64), reduce_dims=space)
               for k, fc in forecasts.items()}
    kw = dict(dim="time", confidence=confidence, n_resamples=2000)
    for k, crps in monthly.items():
        ci = block_bootstrap(crps, **kw)
        rows[k].update(crps_lo=float(ci.lower), crps_hi=float(ci.upper), block_length=ci.attrs["block_length"])
    comparisons = {}
    for k in monthly:
        if k == best:
            continue
        diff = block_bootstrap(monthly[best], monthly[k], statistic="difference", **kw)
        skill = block_bootstrap(monthly[best], monthly[k], statistic="skill", **kw)
        dm = diebold_mariano(monthly[best], monthly[k], dim="time", harvey=True)
        comparisons[k] = {"crps_difference": float(diff.estimate), "difference_lo": float(diff.lower),
                          "difference_hi": float(diff.upper), "crpss": float(skill.estimate),
                          "crpss_lo": float(skill.lower), "crpss_hi": float(skill.upper),
                          "dm_p_value": float(dm.p_value), "block_length": diff.attrs["block_length"]}
    return comparisons


def figure(truth, coarse, ens, bicubic, path, month: int = 0):
    """Truth, coarse input, ensemble mean, spread, one member and the errors of bicubic and the mean, for one month."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = truth.isel(time=month)
    e = ens.isel(time=month)
    panels = [("truth (OSTIA)", t, "K"), ("coarse input (3x3 block means)", coarse.isel(time=month), "K"),
              ("ensemble mean", e.mean("member"), "K"), ("member 0", e.isel(member=0), "K"),
              ("ensemble spread (std)", e.std("member"), "K"),
              ("|bicubic - truth|", abs(bicubic.isel(time=month) - t), "K"),
              ("|ensemble mean - truth|", abs(e.mean("member") - t), "K")]
    lo, hi = float(t.quantile(0.02)), float(t.max())
    emax = float(abs(bicubic.isel(time=month) - t).quantile(0.99))
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 1.45 * len(panels)), sharex=True)
    for ax, (title, da, units) in zip(axes, panels):
        cmap = plt.get_cmap("RdYlBu_r" if "spread" not in title and "|" not in title else "magma").copy()
        cmap.set_bad("0.75")  # land (NaN) in grey
        kw = {"vmin": lo, "vmax": hi} if units == "K" and "|" not in title and "spread" not in title else \
            {"vmin": 0, "vmax": emax}
        im = ax.pcolormesh(da["longitude"], da["latitude"], np.ma.masked_invalid(da.values), cmap=cmap,
                           shading="nearest", **kw)
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_ylabel("lat")
        fig.colorbar(im, ax=ax, label=units, pad=0.01, fraction=0.03)
    axes[-1].set_xlabel("longitude (degrees east)")
    when = str(truth["time"].values[month])[:7]
    fig.suptitle(f"OSTIA SST {when}, downscaled x{FACTOR} (grey: land, NaN in every member)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, few members, nothing written")
    p.add_argument("--steps", type=int, default=300, help="training steps on 2006-2008")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.995, help="EMA decay of the weights")
    p.add_argument("--members", type=int, default=16)
    p.add_argument("--no-static", action="store_true", help="without the static residual-climatology channel")
    p.add_argument("--no-roll", action="store_true", help="without the longitude-roll augmentation")
    p.add_argument("--refit-steps", type=int, default=100,
                   help="steps of further training on 2006-2009 after the calibration (0: score the 2006-2008 model)")
    p.add_argument("--tag", default="", help="suffix of the result files (ablations)")
    a = p.parse_args(argv)
    meta, t_start = run_meta(), time.perf_counter()
    torch.set_num_threads(1)
    steps = 10 if a.quick else a.steps
    members = 4 if a.quick else a.members
    grid = ((4,), (0.0, 1.0)) if a.quick else ((16, 32), (0.0, 1.0))
    cal_members = 4
    refit_steps = min(a.refit_steps, 5) if a.quick else a.refit_steps
    fit_kw = {"static": not a.no_static, "roll": not a.no_roll, "steps": steps, "batch_size": a.batch_size,
              "lr": a.lr, "ema_decay": a.ema}

    ds = load()
    year = ds["time"].dt.year
    fit_set, val, test, train = ds.sel(time=year <= 2008), ds.sel(time=year == 2009), ds.sel(time=year == 2010), \
        ds.sel(time=year <= 2009)
    print(f"OSTIA {ds.sizes['latitude']}x{ds.sizes['longitude']}, factor {FACTOR}: fit {fit_set.sizes['time']}, "
          f"validation {val.sizes['time']} (2009), refit {train.sizes['time']}, test {test.sizes['time']} (2010)",
          flush=True)

    model, trainer, t_fit = fit(fit_set, **fit_kw)
    print(f"fit 2006-2008: {steps} steps in {t_fit:.0f} s, last loss {model.history[-1]['loss']:.3f}", flush=True)
    t0 = time.perf_counter()
    table = model.calibrate(coarsen(val, FACTOR), val, steps=grid[0], etas=grid[1], n_members=cal_members,
                            batch_size=64)
    t_cal = time.perf_counter() - t0
    print(f"calibration on 2009 ({t_cal:.0f} s, {cal_members} members):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"), flush=True)
    t_refit = 0.0
    if refit_steps:
        more_kw = {k: v for k, v in fit_kw.items() if k not in ("static", "steps")}
        t_refit = refit(model, trainer, train, steps=refit_steps, **more_kw)
        print(f"refit on 2006-2009: {refit_steps} more steps in {t_refit:.0f} s, last loss "
              f"{model.history[-1]['loss']:.3f}; sampler stays {model.sampler}", flush=True)
    t_train = t_fit + t_refit

    truth = test[VAR]
    ctest = coarsen(test, FACTOR)
    t0 = time.perf_counter()
    ens = model.downscale(ctest, members, batch_size=64)[VAR]
    t_gen = time.perf_counter() - t0
    ocean = truth.notnull().all("time")
    land = ~ocean.values
    ens = ens.assign_coords(latitude=truth.latitude, longitude=truth.longitude)  # float32 vs float64 round-off
    land_nan = float(np.isnan(ens.values[..., land]).mean())
    ocean_finite = float(np.isfinite(ens.values[..., ~land]).mean())
    base = {m: upsample(ctest, FACTOR, method=m, mask=ocean)[VAR].assign_coords(latitude=truth.latitude,
                                                                               longitude=truth.longitude)
            for m in ("bicubic", "nearest")}
    # the static channel alone, as a deterministic forecast: bicubic + mean residual of 2006-2009
    base["bicubic + residual climatology"] = base["bicubic"] + with_static(train)[STATIC].values
    forecasts = {f"diffusion ({members} members)": ens,
                 **{name: base[m].expand_dims(member=1, axis=1) for name, m in (
                     ("bicubic", "bicubic"), ("nearest neighbour", "nearest"),
                     ("bicubic + residual clim.", "bicubic + residual climatology"))}}
    rows = {name: scores(fc, truth) for name, fc in forecasts.items()}
    comparisons = add_uncertainty(rows, forecasts, truth, best=f"diffusion ({members} members)")
    d = rows[f"diffusion ({members} members)"]
    cols = ("crps", "crps_lo", "crps_hi", "rmse", "spread", "ssr", "rank_flatness")
    head = f"{'method':26s} " + " ".join(f"{c:>14s}" for c in cols)
    print(f"\n2010 (9 months), {int(ocean.sum())} ocean points of {ocean.size}; sampler {model.sampler}")
    print(head + "\n" + "-" * len(head))
    for name, r in rows.items():
        print(f"{name:26s} " + " ".join(f"{r[c]:14.4f}" for c in cols))
    print(f"crps_lo/hi: 90% circular block bootstrap along the months (blocks of {d['block_length']}); "
          f"diffusion against each baseline (paired, HLN Diebold-Mariano):")
    for name, c in comparisons.items():
        print(f"  vs {name:24s} CRPS difference {c['crps_difference']:+.4f} [{c['difference_lo']:+.4f}, "
              f"{c['difference_hi']:+.4f}], CRPSS {c['crpss']:.2f} [{c['crpss_lo']:.2f}, {c['crpss_hi']:.2f}], "
              f"DM p-value {c['dm_p_value']:.2g}")
    cost = {"train_s": t_train, "fit_2006_2008_s": t_fit, "refit_s": t_refit, "calibrate_s": t_cal, "generate_s": t_gen,
            "s_per_member": t_gen / (members * truth.sizes["time"])}
    print(f"land points NaN in every member: {100 * land_nan:.1f}% (ocean points finite: {100 * ocean_finite:.1f}%)")
    print(f"cost: training {t_train:.0f} s ({steps} + {refit_steps} steps, batch {a.batch_size}), {cost['s_per_member']:.3f} s per "
          f"member (18x432, DDIM {model.sampler['steps']} steps), 1 thread")
    targets = {"crps_beats_bicubic": d["crps"] < rows["bicubic"]["crps"],
               "rmse_beats_bicubic": d["rmse"] < rows["bicubic"]["rmse"],
               "ssr_in_0.8_1.2": 0.8 <= d["ssr"] <= 1.2, "land_all_nan": land_nan == 1.0}
    print("targets:", targets)
    result = {"meta": {**meta, "wall_seconds": time.perf_counter() - t_start}, "setup": {"data": "OSTIA monthly SST (iris-sample-data ostia_monthly.nc)", "variable": VAR,
                        "fine": [18, 432], "coarse": [6, 144], "factor": FACTOR, "fit": "2006-04..2008-12",
                        "calibrate": "2009", "train": "2006-04..2009-12" if refit_steps else "2006-04..2008-12",
                        "refit_steps": refit_steps,
                        "test": "2010-01..2010-09", "net": NET, **{k: v for k, v in fit_kw.items()},
                        "members": members, "calibration_members": cal_members, "quick": a.quick, "threads": 1},
              "sampler": model.sampler, "scores": rows, "comparisons": comparisons, "land_nan_fraction": land_nan,
              "ocean_finite_fraction": ocean_finite, "ocean_points": int(ocean.sum()), "seconds": cost,
              "calibration": table.to_dict(orient="records"), "targets": targets}
    if not a.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = RESULTS / f"real_sst_downscaling{a.tag}"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float))
        figure(truth, ctest[VAR], ens, base["bicubic"], stem.with_suffix(".png"))
        print(f"wrote {stem}.json and {stem}.png")
    return result


if __name__ == "__main__":
    main()
