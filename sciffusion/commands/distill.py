"""``sciffusion distill RUN -o RUN_FAST --calls 2``: a few-call student of a trained model.

The teacher is the run's model (EMA weights); the student is trained by :func:`sciffusion.distill.distill`
on the run's own training conditions, resumably in ``RUN_FAST`` (rerun the same command after an
interruption), and saved to ``RUN_FAST/student`` with the run's data spec, so that
``sciffusion sample RUN_FAST/student DATA -o OUT.zarr`` draws members with ``--calls`` network calls.
See ``docs/distillation.md``.
"""

from sciffusion.commands._common import UserError, refuse_overlap, require_min

NAME = "distill"
HELP = "distil a trained model into a 1-4 call sampler (resumable)"


def add_arguments(parser):
    parser.add_argument("run", help="the teacher: a training run directory or a step_* checkpoint")
    parser.add_argument("-o", "--out", required=True, help="the student's run directory")
    parser.add_argument("--calls", type=int, default=2, help="network calls per member (1, 2, 4...; default 2)")
    parser.add_argument("--method", default="trajectory", choices=("trajectory", "progressive", "schedule"),
                        help="distillation method (default trajectory; schedule learns the noise levels of a "
                             "DPM-Solver++(2M) on the teacher's own network, --calls >= 2)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default 4000; schedule: 400)")
    parser.add_argument("--teacher-steps", type=int, default=64,
                        help="Karras levels of the teacher's ODE (default 64): a multiple of --calls, at least twice it "
                             "(trajectory) or a power-of-two multiple (progressive)")
    parser.add_argument("--sigma-max", type=float, default=80.0,
                        help="the teacher ODE's top noise level (default 80; with --teacher-steps equal to the model's "
                             "Heun steps and its sigma_max, the student learns that sampler's own map)")
    parser.add_argument("--trajectories", type=int, default=None,
                        help="teacher trajectories (default 20000; schedule: 512)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256; schedule: 16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    require_min(args, 1, "calls", "steps", "teacher_steps", "trajectories", "batch_size")
    if args.method == "schedule" and args.calls < 2:
        raise UserError(f"--method schedule needs --calls >= 2 (one call is the denoised mean), got {args.calls}")
    if not args.sigma_max > 0:
        raise UserError(f"--sigma-max must be > 0, got {args.sigma_max}")
    require_min(args, 0, "seed")
    refuse_overlap(args.out, "-o", {"RUN": args.run})

    from sciffusion.checkpoint import load_denoiser
    from sciffusion.data import Normalizer, open_dataset
    from sciffusion.distill import distill
    from sciffusion.recipes import pairs_from_spec

    teacher, config = load_denoiser(args.run, device=args.device)
    if "student" in config:
        raise UserError(f"RUN {args.run} is already a distilled student; distil its teacher instead")
    if "data" not in config or "path" not in config["data"]:
        raise UserError(f"RUN {args.run} has no [data] spec with a path (was it trained by `sciffusion train`?)")
    normalizer = Normalizer.from_dict(config["normalizer"]) if config.get("normalizer") else None
    pairs = pairs_from_spec(open_dataset(config["data"]["path"]), config["data"], normalizer)
    kept = {k: config[k] for k in ("data", "normalizer") if k in config}
    student = distill(teacher, pairs, calls=args.calls, method=args.method, teacher_steps=args.teacher_steps,
                      sigma_max=args.sigma_max,
                      n_trajectories=args.trajectories, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                      out_dir=args.out, device=args.device, progress=not args.no_progress, config=kept)
    print(f"distilled {args.run} into {student.calls} call(s) per member: {args.out}/student "
          f"(sample it with: sciffusion sample {args.out}/student DATA -o OUT.zarr)")
    return 0
