"""The end-to-end demo: SEEDS-style ensemble emulation of Lorenz-96 on CPU in about a minute.

``run_demo`` simulates physics ensembles of the imperfect Lorenz-96 forecast model (31 members from
perturbed truth states) for held-out initial times, loads the small pretrained emulator shipped in
``sciffusion/assets/seeds_lorenz96`` (rebuilt by ``python -m sciffusion.emulators.pretrain``),
generates members from 2 seed members of each physics ensemble, streams them to
``ensemble.zarr``, scores the 2 seeds, the physics ensemble and the emulated ensemble against
the truth, draws the rank histograms and the spread-skill plot, and returns the skill table.

:func:`demo_dataset`, the advected-GRF toy data set of the examples and tests, is
:func:`sciffusion.systems.advected_grf`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import xarray as xr

from sciffusion._deprecate import renamed_keywords
from sciffusion.systems.grf import advected_grf as demo_dataset, periodic_grf as grf  # noqa: F401  (re-exported)


@renamed_keywords(members="n_members")
def run_demo(out: str | Path = "sciffusion_demo", *, n_init: int = 12, n_members: int = 31, steps: int | None = None,
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

    members, out = n_members, Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.perf_counter()
    phys = lorenz96_ensembles(n_init, 300 + int(seed), out=out / "physics.zarr")
    timings["simulate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    emu = EnsembleEmulator.load(checkpoint or default_checkpoint())
    k = emu.coder.n_seeds
    seeds = phys[["x"]].isel(member=list(range(k)))
    ens = emu.generate(seeds, members, steps=steps, seed=seed, batch_size=batch_size, out=out / "ensemble.zarr",
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
