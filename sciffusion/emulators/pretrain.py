"""Train the small Lorenz-96 ensemble emulator shipped in ``sciffusion/assets`` (used by ``sciffusion demo``).

Reproduce the shipped checkpoint (about 10 minutes on one CPU core)::

    python -m sciffusion.emulators.pretrain --out sciffusion/assets/seeds_lorenz96

The setup is the SEEDS experiment on Lorenz-96: the truth is :class:`~sciffusion.systems.Lorenz96`
(F = 8); the forecast model is :func:`~sciffusion.systems.lorenz96_forecast_model` (F = 8.5 plus
stochastic forcing); physics ensembles of 31 members start from perturbed truth states; lead
times 0.25 .. 1.5 model time units (1.25 .. 7.5 "days"). The emulator is conditioned on K = 2
seed members; after training its noise temperature is calibrated on validation initial times
against a held-out physics member (emulation) or the truth (post-processing).
Training, validation and test initial times come from different truth trajectories (seeds
101, 102 and >= 200).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import xarray as xr

from sciffusion._deprecate import renamed_keywords

L96_SETUP = {"members": 31, "n_leads": 6, "lead_interval": 0.25, "forcing_error": 0.5, "noise_std": 0.3}
TRAIN_SEED, VALIDATION_SEED = 101, 102
ASSET = Path(__file__).resolve().parents[1] / "assets" / "seeds_lorenz96"


def default_checkpoint() -> Path:
    """The pretrained Lorenz-96 emulator shipped with the package."""
    if not (ASSET / "config.json").exists():
        raise FileNotFoundError(f"the pretrained emulator {ASSET} is missing; rebuild it with "
                                "`python -m sciffusion.emulators.pretrain`")
    return ASSET


def l96_setup(forcing_error: float | None = None, noise_std: float | None = None) -> dict:
    """The :data:`L96_SETUP` overrides that are given (``None`` keeps the default forecast model)."""
    return {k: v for k, v in (("forcing_error", forcing_error), ("noise_std", noise_std)) if v is not None}


@renamed_keywords(members="n_members", store="out")
def lorenz96_ensembles(n_init: int, seed: int, *, n_members: int | None = None, out=None,
                       setup: dict | None = None) -> xr.Dataset:
    """Physics ensembles of the imperfect Lorenz-96 forecast model with their truth, lead 0 dropped.

    ``setup`` overrides entries of :data:`L96_SETUP` (e.g. ``{"noise_std": 0.0}``); ``n_members``
    (default ``L96_SETUP["members"]``) and the zarr path ``out`` go to :func:`~sciffusion.systems.simulate`.
    Returns ``x (init_time, lead_time, member, k)`` and ``x_truth (init_time, lead_time, k)``."""
    from sciffusion.systems import Lorenz96, lorenz96_forecast_model, simulate

    s = {**L96_SETUP, **(setup or {})}
    model = lorenz96_forecast_model(forcing_error=s["forcing_error"], noise_std=s["noise_std"])
    ds = simulate(Lorenz96(), forecast_system=model, n_members=n_members or s["members"], n_init=n_init,
                  n_leads=s["n_leads"], lead_interval=s["lead_interval"], seed=seed, out=out, mode="w",
                  progress=False)
    return ds.isel(lead_time=slice(1, None)).drop_vars("chunk_done", errors="ignore").load()


def pretrain_lorenz96(out: str | Path | None = ASSET, *, mode: str = "emulation", truth_fraction: float = 0.5,
                      n_init: int = 400, steps: int = 3000, batch_size: int = 256, lr: float = 2e-3, seed: int = 0,
                      calibrate: bool = True, n_validation: int = 16, progress: bool = True, log=print,
                      setup: dict | None = None, device=None):
    """Train (and calibrate) a Lorenz-96 :class:`~sciffusion.emulators.EnsembleEmulator`; save it to ``out``.

    ``setup`` overrides :data:`L96_SETUP`; ``device`` is the torch device for training and calibration."""
    from sciffusion.emulators.calibrate import calibrate_spread
    from sciffusion.emulators.ensemble import EnsembleEmulator

    t0 = time.perf_counter()
    train = lorenz96_ensembles(n_init, TRAIN_SEED, setup=setup)
    log(f"simulated {n_init} x {L96_SETUP['members']}-member training ensembles in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    emu = EnsembleEmulator.fit(train, mode=mode, truth_fraction=truth_fraction, steps=steps, batch_size=batch_size,
                               lr=lr, warmup_steps=200, ema_decay=0.998, seed=seed, progress=progress, device=device,
                               net={"name": "PeriodicConv1d", "kwargs": {"width": 32, "n_blocks": 4}})
    log(f"trained {steps} steps in {time.perf_counter() - t0:.1f} s; final loss {emu.history[-1]['loss']:.4f}")
    emu.sampler["steps"] = 8
    if calibrate:
        val = lorenz96_ensembles(n_validation, VALIDATION_SEED, setup=setup)
        k = emu.coder.n_seeds
        obs = val[["x_truth"]].rename(x_truth="x") if mode == "post-processing" else val[["x"]].isel(member=k, drop=True)
        cal = calibrate_spread(emu, val.isel(member=list(range(k))), obs, n_members=16, device=device)
        log(f"calibrated {cal}")
    if out is not None:
        emu.save(out)
        log(f"saved {out}")
    return emu


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ASSET))
    p.add_argument("--mode", default="emulation", choices=["emulation", "post-processing"])
    p.add_argument("--truth-fraction", type=float, default=0.5)
    p.add_argument("--n-init", type=int, default=400)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-calibrate", action="store_true")
    p.add_argument("--forcing-error", type=float, default=None,
                   help=f"forecast model F - truth F (default {L96_SETUP['forcing_error']})")
    p.add_argument("--noise-std", type=float, default=None,
                   help=f"forecast-model stochastic forcing (default {L96_SETUP['noise_std']})")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = l96_setup(args.forcing_error, args.noise_std)
    pretrain_lorenz96(args.out, mode=args.mode, truth_fraction=args.truth_fraction, n_init=args.n_init,
                      steps=args.steps, seed=args.seed, calibrate=not args.no_calibrate, setup=setup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
