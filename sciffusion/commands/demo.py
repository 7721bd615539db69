"""``sciffusion demo``: simulate, train, sample and score end to end on CPU in a few minutes."""

NAME = "demo"
HELP = "run the end-to-end demo: simulate fields, train a conditional model, sample and score an ensemble"


def add_arguments(parser):
    parser.add_argument("--out", default="sciffusion_demo", help="output directory (default ./sciffusion_demo)")
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    import time

    from sciffusion.demo import format_summary, run_demo

    t0 = time.perf_counter()
    summary = run_demo(args.out, steps=args.steps, members=args.members, cases=args.cases, seed=args.seed,
                       progress=not args.no_progress)
    print(format_summary(summary))
    print(f"total wall time {time.perf_counter() - t0:.1f} s")
    return 0
