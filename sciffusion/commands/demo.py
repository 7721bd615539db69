"""``sciffusion demo``: SEEDS-style ensemble emulation of Lorenz-96 end to end, on CPU in about a minute.

Writes into ``--out`` (default ``./sciffusion_demo``), which must be new or empty unless
``--overwrite`` (replace the files there) or ``--resume`` (continue an interrupted ensemble.zarr).
Without ``--threads`` it uses at most 2 torch threads.
"""

from pathlib import Path

from sciffusion.commands._common import UserError, add_resume_arguments, refuse_overlap, require_min

NAME = "demo"
HELP = ("run the end-to-end demo: simulate Lorenz-96 physics ensembles, generate members from 2 seeds with the "
        "pretrained emulator, score and plot them")


def add_arguments(parser):
    parser.add_argument("--out", default="sciffusion_demo", help="output directory (default ./sciffusion_demo)")
    parser.add_argument("--members", type=int, default=31, help="members to generate per initial time (default 31)")
    parser.add_argument("--n-init", type=int, default=12, help="initial times to forecast (default 12)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's)")
    parser.add_argument("--checkpoint", default=None, help="emulator checkpoint (default: the one shipped in the package)")
    parser.add_argument("--seed", type=int, default=0)
    add_resume_arguments(parser, "continue an interrupted ensemble.zarr in --out",
                         "replace the files of an earlier demo in --out")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    require_min(args, 1, "members", "n_init", "steps")
    require_min(args, 0, "seed")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {args.out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not (args.resume or args.overwrite):
        raise UserError(f"--out {args.out} exists and is not empty; pass --overwrite to replace its files, "
                        f"--resume to continue the run there, or another --out")
    refuse_overlap(args.out, "--out", {"--checkpoint": args.checkpoint})

    import time

    import torch

    from sciffusion.demo import format_summary, run_demo

    if args.threads is None:  # the demo's own default: few threads beat many on small batches
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    t0 = time.perf_counter()
    summary = run_demo(args.out, n_init=args.n_init, n_members=args.members, steps=args.steps, seed=args.seed,
                       checkpoint=args.checkpoint, progress=not args.no_progress, overwrite=not args.resume)
    print(format_summary(summary))
    print(f"total wall time {time.perf_counter() - t0:.1f} s")
    return 0
