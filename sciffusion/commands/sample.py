"""``sciffusion sample CHECKPOINT DATA -o OUT.zarr``: generate an ensemble with a trained model.

``--workers N`` generates on a local dask cluster of N worker processes, ``--scheduler ADDRESS``
on a running dask cluster (workers need the checkpoint and the output path on a shared
filesystem); the ensemble is the same as without them. See ``docs/scale.md``.
"""

from sciffusion.commands._common import (SAMPLER_METHODS, UserError, add_checkpoint_arguments, add_ensemble_output_arguments,
                                         refuse_overlap, require_min, sampler_options, write_mode)

NAME = "sample"
HELP = "generate an ensemble from a checkpoint for the conditions in a zarr/netCDF dataset"


def add_arguments(parser):
    add_checkpoint_arguments(parser, "data", "zarr store or netCDF file holding the conditioning states",
                             "run directory (uses its latest checkpoint) or a step_* directory")
    parser.add_argument("--members", type=int, default=16, help="ensemble size (default 16)")
    parser.add_argument("--cases", type=int, nargs="+", help="indices of the condition/target pairs to use (default all)")
    # the defaults of recipes.DEFAULT_SAMPLER, written out: the parser imports no torch
    parser.add_argument("--steps", type=int, help="sampler steps (default 18; a distilled student: its own)")
    parser.add_argument("--method", choices=SAMPLER_METHODS, help="sampler (default heun; a distilled student: its DDIM)")
    parser.add_argument("--churn", type=float, help="EDM churn, with --method stochastic only (default 30)")
    parser.add_argument("--eta", type=float, help="DDIM eta, with --method ddim only (default 1)")
    add_ensemble_output_arguments(parser)
    parser.add_argument("--no-progress", action="store_true")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="generate on the dask cluster at ADDRESS (e.g. tcp://host:8786)")
    where.add_argument("--workers", type=int, metavar="N", help="generate on a local dask cluster of N worker processes")
    parser.add_argument("--batches-per-task", type=int, metavar="K",
                        help="sampler batches (of --batch-size) per dask task with --scheduler/--workers "
                             "(default: about two tasks per worker)")


def run(args) -> int:
    require_min(args, 1, "members", "steps", "batch_size", "member_chunk", "workers", "batches_per_task")
    require_min(args, 0, "seed")
    options = sampler_options(args)
    if args.rng != "torch":  # the default leaves the store's sampler record as it was before --rng existed
        options["rng"] = args.rng
    if args.batches_per_task is not None and args.scheduler is None and args.workers is None:
        raise UserError("--batches-per-task needs --scheduler or --workers")
    refuse_overlap(args.out, "-o", {"DATA": args.data, "CHECKPOINT": args.checkpoint})

    from sciffusion.distributed import SchedulerUnreachable
    from sciffusion.recipes import sample_from_checkpoint

    try:
        ds = sample_from_checkpoint(
            args.checkpoint, args.data, args.out, n_members=args.members, cases=args.cases, steps=args.steps,
            method=args.method, seed=args.seed, batch_size=args.batch_size, member_chunk=args.member_chunk,
            mode=write_mode(args), progress=not args.no_progress, device=args.device, scheduler=args.scheduler,
            workers=args.workers, batches_per_task=args.batches_per_task, **options,
        )
    except SchedulerUnreachable as exc:
        raise UserError(str(exc)) from exc
    print(f"wrote {dict(ds.sizes)} to {args.out}")
    return 0
