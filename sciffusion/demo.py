"""The end-to-end demo: SEEDS-style ensemble emulation of Lorenz-96 on CPU in about a minute.

``run_demo`` simulates physics ensembles of the imperfect Lorenz-96 forecast model (31 members from
perturbed truth states) for held-out initial times, loads the small pretrained emulator shipped in
``sciffusion/assets/seeds_lorenz96`` (rebuilt by ``python -m sciffusion.emulators.pretrain``),
generates members from 2 seed members of each physics ensemble, streams them to
``ensemble.zarr``, scores the 2 seeds, the physics ensemble and the emulated ensemble against
the truth, draws the rank histograms and the spread-skill plot, and returns the skill table.

:func:`demo_dataset` (an advected Gaussian random field with an exact conditional law) is the
toy data set of the conditional-sampling examples and tests.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr


def grf(shape, n, *, length_scale=4.0, generator=None) -> torch.Tensor:
    """``n`` periodic Gaussian random fields on ``shape`` with unit variance per point and
    power spectrum ``(1 + (k l)^2)^-2`` (Matern-like, ``l`` in grid points)."""
    ky = torch.fft.fftfreq(shape[0]) * 2 * np.pi
    kx = torch.fft.fftfreq(shape[1]) * 2 * np.pi
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    amp = (1 + k2 * length_scale**2) ** -1.0
    amp = amp / amp.pow(2).sum().sqrt()
    white = torch.randn(n, *shape, generator=generator, dtype=torch.float64)
    field = torch.fft.ifft2(torch.fft.fft2(white) * amp).real * np.sqrt(shape[0] * shape[1])
    return field


def demo_dataset(n_time: int = 1500, size: int = 32, a: float = 0.9, shift: int = 1, seed: int = 0) -> xr.Dataset:
    """One trajectory of the advected-GRF process as an xarray Dataset ``u(time, y, x)``."""
    g = torch.Generator().manual_seed(seed)
    xi = grf((size, size), n_time, generator=g)
    u = torch.empty(n_time, size, size, dtype=torch.float64)
    u[0] = xi[0]
    for t in range(1, n_time):
        u[t] = a * torch.roll(u[t - 1], shift, dims=-1) + np.sqrt(1 - a**2) * xi[t]
    coords = {"time": np.arange(n_time, dtype=np.int64), "y": np.arange(size, dtype=np.float64),
              "x": np.arange(size, dtype=np.float64)}
    ds = xr.Dataset({"u": (("time", "y", "x"), u.numpy().astype(np.float32),
                           {"long_name": "advected random field", "units": "1"})}, coords=coords)
    ds["time"].attrs.update(long_name="time step", units="steps")
    ds.attrs.update(title="sciffusion demo: advected Gaussian random field", a=a, shift=shift, seed=seed,
                    conditional_std=float(np.sqrt(1 - a**2)))
    return ds


def run_demo(out: str | Path = "sciffusion_demo", *, n_init: int = 12, members: int = 31, steps: int | None = None,
             seed: int = 0, checkpoint: str | Path | None = None, batch_size: int = 512, progress: bool = True,
             overwrite: bool = True) -> dict:
    """Simulate, generate from 2 seeds with the pretrained emulator, score, plot.

    Writes under ``out``: ``physics.zarr`` (ensembles + truth), ``ensemble.zarr`` (emulated
    members, resumable with ``overwrite=False``), ``rank_histogram.png``, ``spread_skill.png`` and
    ``summary.json``; returns the summary (scores per ensemble, timings).
    """
    from sciffusion import plot
    from sciffusion.emulators import EnsembleEmulator, ensemble_skill
    from sciffusion.emulators.pretrain import L96_SETUP, default_checkpoint, lorenz96_ensembles
    import sciffusion.metrics as sm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.perf_counter()
    phys = lorenz96_ensembles(n_init, 300 + int(seed), store=out / "physics.zarr")
    timings["simulate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    emu = EnsembleEmulator.load(checkpoint or default_checkpoint())
    k = emu.coder.n_seeds
    seeds = phys[["x"]].isel(member=list(range(k)))
    ens = emu.generate(seeds, members, steps=steps, seed=seed, batch_size=batch_size, store=out / "ensemble.zarr",
                       mode="w" if overwrite else "resume", progress=progress)
    timings["generate_s"] = time.perf_counter() - t0
    truth = phys["x_truth"]
    clim = {"clim_mean": float(truth.mean()), "clim_std": float(truth.std())}
    ensembles = {f"{k} seeds": seeds["x"], f"physics ({L96_SETUP['members']})": phys["x"], f"emulated ({members})": ens["x"].load()}
    scores = {name: ensemble_skill(e, truth, **clim) for name, e in ensembles.items()}
    hists = {name: sm.rank_histogram(e, truth, reduce_dims="all") for name, e in ensembles.items()}
    plot.rank_histogram(hists).savefig(out / "rank_histogram.png", dpi=80)
    spread_skill_figure(ensembles, truth).savefig(out / "spread_skill.png", dpi=80)
    summary = {"members": members, "n_init": n_init, "leads": phys["lead_time"].values.tolist(), "n_seeds": k,
               "checkpoint": emu.checkpoint, "sampler": json.loads(ens.attrs["sampler"]), "scores": scores,
               "timings": timings, "ensemble": str(out / "ensemble.zarr"),
               "plots": [str(out / "rank_histogram.png"), str(out / "spread_skill.png")]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def spread_skill_figure(ensembles: dict, truth: xr.DataArray):
    """Spread and ensemble-mean RMSE per lead, and their ratio, of each ensemble (the seeds, the
    physics ensemble, the emulated one: ``{label: x(init_time, lead_time, member, k)}``) against
    ``truth``, one colour each, lead time in the coordinate's units."""
    from sciffusion import plot
    import sciffusion.metrics as sm

    comps = {name: sm.spread_skill_ratio(e, truth, reduce_dims=["init_time", "k"], components=True)
             for name, e in ensembles.items()}
    return plot.spread_skill(comps, lead_dim="lead_time", title="Lorenz-96 ensembles")


def format_summary(summary: dict) -> str:
    """The skill table printed by ``sciffusion demo``."""
    from sciffusion.emulators.skill import format_per_lead, format_table

    t = summary["timings"]
    return "\n".join([
        format_table(summary["scores"]), "", format_per_lead(summary["scores"]), "",
        f"{summary['members']} members from {summary['n_seeds']} seeds x {summary['n_init']} initial times x "
        f"{len(summary['leads'])} leads; sampler {summary['sampler']}",
        f"simulate {t['simulate_s']:.1f} s, generate {t['generate_s']:.1f} s",
        f"ensemble written to {summary['ensemble']}; plots {', '.join(summary['plots'])}"])
