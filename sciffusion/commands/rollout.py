"""``sciffusion rollout CHECKPOINT INITIAL -o OUT.zarr --n-steps N``: roll a trained emulator forward.

Works with checkpoints of :class:`~sciffusion.emulators.Rollout` and
:class:`~sciffusion.emulators.DYffusion` (told apart by their config). The output zarr holds
``v (member, time, *grid)`` chunked along time with the whole ensemble per chunk, provenance in
its attributes; ``--resume`` continues an interrupted run from the last written time (the result
equals an uninterrupted run). See ``docs/rollout.md``.
"""

from sciffusion.commands._common import (SAMPLER_METHODS, UserError, add_checkpoint_arguments, add_resume_arguments,
                                         refuse_overlap, require_min, write_mode)

NAME = "rollout"
HELP = "roll a Rollout or DYffusion emulator forward from an initial state, streaming to zarr"


def add_arguments(parser):
    add_checkpoint_arguments(parser, "initial", "zarr store or netCDF file holding the initial state",
                             "checkpoint directory (or a training run directory)")
    parser.add_argument("--n-steps", type=int, help="number of time steps to roll out (required)")
    parser.add_argument("--steps", type=int, dest="old_steps",
                        help="deprecated spelling of --n-steps, kept for one release (--steps means sampler steps elsewhere)")
    parser.add_argument("--members", type=int, default=1, help="ensemble size (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--select", nargs="+", default=[], metavar="DIM=INDEX",
                        help="pick the initial state by position, e.g. run=0 time=-1 (default: the last time)")
    parser.add_argument("--forcings", help="zarr store or netCDF file with the forcing variables along time")
    parser.add_argument("--sampler-steps", type=int, help="diffusion sampler steps (autoregressive model)")
    parser.add_argument("--method", choices=SAMPLER_METHODS, help="sampler (autoregressive model)")
    parser.add_argument("--chunk-steps", type=int, default=100, help="times per zarr chunk and per resumable block")
    parser.add_argument("--device", help="torch device (default: cpu)")
    add_resume_arguments(parser, "continue an interrupted rollout")
    parser.add_argument("--no-progress", action="store_true")


def load_emulator(path, device=None):
    """A :class:`Rollout` or :class:`DYffusion` from its checkpoint, whichever it holds."""
    import json

    from sciffusion.checkpoint import resolve
    from sciffusion.emulators import DYffusion, Rollout

    config = json.loads((resolve(path) / "config.json").read_text())
    return (DYffusion if "dyffusion" in config else Rollout).load(path, device=device)


def run(args) -> int:
    if args.old_steps is not None:
        if args.n_steps is not None:
            raise UserError("give --n-steps only (--steps is its deprecated spelling)")
        import warnings

        warnings.warn("sciffusion rollout --steps is deprecated: use --n-steps for the rollout length (in the next "
                      "release --steps will mean sampler steps, as in sciffusion sample)", FutureWarning, stacklevel=1)
        args.n_steps = args.old_steps
    if args.n_steps is None:
        raise UserError("the following argument is required: --n-steps (the number of time steps to roll out)")
    require_min(args, 1, "n_steps", "members", "sampler_steps", "chunk_steps")
    require_min(args, 0, "seed")
    refuse_overlap(args.out, "-o", {"INITIAL": args.initial, "--forcings": args.forcings,
                                    "CHECKPOINT": args.checkpoint})

    from sciffusion.data import open_dataset

    model = load_emulator(args.checkpoint, device=args.device)
    ds = open_dataset(args.initial, chunks=None)
    c = model.coder
    missing = [v for v in c.variables if v not in ds.data_vars]
    if missing:
        raise UserError(f"INITIAL {args.initial} lacks the variable(s) {missing} the model was trained on; "
                        f"it has {sorted(map(str, ds.data_vars))}")
    select = {}
    for item in args.select:
        dim, _, index = item.partition("=")
        if dim not in ds.dims or not index.lstrip("-").isdigit():
            raise UserError(f"--select {item!r}: expected DIM=INDEX with DIM one of {sorted(map(str, ds.dims))}")
        if not -ds.sizes[dim] <= int(index) < ds.sizes[dim]:
            raise UserError(f"--select {item!r}: {dim} has {ds.sizes[dim]} positions in {args.initial}")
        select[dim] = int(index)
    if c.time_dim in ds.dims and c.time_dim not in select:
        select[c.time_dim] = -1
    if c.time_dim in select:  # keep the history before the chosen time
        stop = select.pop(c.time_dim) % ds.sizes[c.time_dim] + 1
        ds = ds.isel({c.time_dim: slice(max(0, stop - c.history), stop)})
    ds = ds.isel(select)[c.variables]
    forcings = open_dataset(args.forcings, chunks=None) if args.forcings else None
    out = model.rollout(ds, args.n_steps, n_members=args.members, forcings=forcings, seed=args.seed, out=args.out,
                        chunk_steps=args.chunk_steps, mode=write_mode(args), progress=not args.no_progress,
                        device=args.device, steps=args.sampler_steps, method=args.method)
    print(f"wrote {dict(out.sizes)} to {args.out}")
    return 0
