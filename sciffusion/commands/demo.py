"""``sciffusion demo``: SEEDS-style ensemble emulation of Lorenz-96 end to end, on CPU in about a minute."""

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
    parser.add_argument("--resume", action="store_true", help="continue an interrupted ensemble.zarr")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    import time

    import torch

    from sciffusion.demo import format_summary, run_demo

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    t0 = time.perf_counter()
    summary = run_demo(args.out, n_init=args.n_init, members=args.members, steps=args.steps, seed=args.seed,
                       checkpoint=args.checkpoint, progress=not args.no_progress, overwrite=not args.resume)
    print(format_summary(summary))
    print(f"total wall time {time.perf_counter() - t0:.1f} s")
    return 0
