"""``sciffusion simulate``: truth runs and physics ensembles of the built-in systems, to zarr.

Examples::

    sciffusion simulate lorenz96 --members 20 --n-init 10 --n-leads 40 -o l96.zarr
    sciffusion simulate kolmogorov --members 8 --size 64 --reynolds 100 -o kf.zarr --resume
    sciffusion simulate darcy --members 1000 --size 128 --kind lognormal -o darcy.zarr
    sciffusion simulate shallow-water --members 4 --n-leads 20 -o swe.zarr
    sciffusion simulate helmholtz --members 1000 --size 128 -o helmholtz.zarr   # also poisson, navier-stokes
"""

from __future__ import annotations

import argparse

from sciffusion.commands._common import UserError, add_resume_arguments, require_min, write_mode

NAME = "simulate"
HELP = "run truth trajectories and perturbed-initial-condition ensembles of a built-in system to zarr"
SYSTEM_NAMES = ("lorenz96", "kolmogorov", "darcy", "shallow-water", "poisson", "helmholtz", "navier-stokes")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("system", metavar="SYSTEM", choices=SYSTEM_NAMES, help="one of: " + ", ".join(SYSTEM_NAMES))
    parser.add_argument("-o", "--output", required=True, help="output zarr store (path)")
    parser.add_argument("--members", type=int, default=8, help="ensemble members (the (a, u) pair systems: samples); default 8")
    parser.add_argument("--n-init", type=int, default=1, help="initial times along the truth run; default 1")
    parser.add_argument("--n-leads", type=int, default=10, help="lead times after lead 0; default 10")
    parser.add_argument("--lead-interval", type=float, default=None, help="time between leads (system time units)")
    parser.add_argument("--init-interval", type=float, default=None, help="time between initial times")
    parser.add_argument("--spinup", type=float, default=None, help="spin-up of the truth before the first init")
    parser.add_argument("--perturbation", type=float, default=None, help="initial-condition perturbation scale")
    parser.add_argument("--seed", type=int, default=0, help="master seed; member m of init i is seeded by (seed, i, m)")
    parser.add_argument("--size", type=int, default=None,
                        help="lorenz96: K (40); the 2-D grids: points per side (64); shallow-water: nlat (64, nlon = 2 nlat)")
    parser.add_argument("--dt", type=float, default=None, help="internal time step (shallow-water: seconds)")
    parser.add_argument("--reynolds", type=float, default=100.0, help="kolmogorov: Reynolds number 1/nu; default 100")
    parser.add_argument("--kind", choices=("threshold", "lognormal"), default="threshold", help="darcy: coefficient variant")
    parser.add_argument("--forecast-forcing-error", type=float, default=None,
                        help="lorenz96: run members with the imperfect forecast model (F + this error, stochastic forcing)")
    parser.add_argument("--chunk-members", type=int, default=64, help="pair systems (darcy, poisson, ...): samples per zarr chunk; default 64")
    parser.add_argument("--device", default="cpu", help="torch device for the time-dependent systems (cpu, cuda)")
    add_resume_arguments(parser, "continue an interrupted run, skipping finished chunks")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_system(args: argparse.Namespace):
    """The (truth system, forecast system or None) pair described by ``args``."""
    from sciffusion import systems

    if args.dt is not None and args.system in ("darcy", "poisson", "helmholtz"):
        raise ValueError(f"--dt does not apply to {args.system} (a stationary problem)")
    kw = {} if args.dt is None else {"dt_seconds" if args.system == "shallow-water" else "dt": args.dt}
    if args.system == "lorenz96":
        kw.update({} if args.size is None else {"k": args.size})
        truth = systems.Lorenz96(**kw, device=args.device)
        if args.forecast_forcing_error is None:
            return truth, None
        return truth, systems.lorenz96_forecast_model(args.forecast_forcing_error, **kw, device=args.device)
    if args.forecast_forcing_error is not None:
        raise ValueError("--forecast-forcing-error applies to lorenz96 only")
    n = 64 if args.size is None else args.size
    if args.system == "kolmogorov":
        return systems.KolmogorovFlow(n=n, reynolds=args.reynolds, device=args.device, **kw), None
    if args.system == "darcy":
        return systems.DarcyFlow(n=n, kind=args.kind), None
    if args.system in ("poisson", "helmholtz"):
        return (systems.Poisson if args.system == "poisson" else systems.Helmholtz)(n=n), None
    if args.system == "navier-stokes":
        return systems.NavierStokes(n=n, device=args.device, **kw), None
    return systems.ShallowWater(nlat=n, nlon=2 * n, device=args.device, **kw), None


def run(args: argparse.Namespace) -> int:
    require_min(args, 1, "members", "n_init", "size", "chunk_members")
    require_min(args, 0, "n_leads", "seed")

    from sciffusion.systems import simulate

    try:
        truth, forecast = build_system(args)
    except ImportError as exc:  # optional dependency (torch-harmonics for shallow-water)
        raise UserError(str(exc)) from exc
    ds = simulate(
        truth, n_members=args.members, n_init=args.n_init, n_leads=args.n_leads, lead_interval=args.lead_interval,
        init_interval=args.init_interval, spinup=args.spinup, perturbation=args.perturbation,
        forecast_system=forecast, seed=args.seed, out=args.output, mode=write_mode(args),
        chunk_members=args.chunk_members, progress=not args.no_progress,
    )
    sizes = ", ".join(f"{k}={v}" for k, v in ds.sizes.items())
    print(f"wrote {args.system} to {args.output} ({sizes})")
    return 0
