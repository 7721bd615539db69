"""``sciffusion train CONFIG``: train a conditional diffusion model from a TOML/JSON config.

Under ``torchrun --nproc_per_node N -m sciffusion train CONFIG`` it trains with DDP over N
processes (``[training] batch_size`` is the global batch); only rank 0 prints and checkpoints.
"""

NAME = "train"
HELP = "train a conditional diffusion model from a TOML or JSON config (resumes if interrupted)"


def add_arguments(parser):
    parser.add_argument("config", help="TOML or JSON file with [data], [model] and [training] tables")
    parser.add_argument("--steps", type=int, help="override [training] steps")
    parser.add_argument("--out", help="override [training] out_dir")
    parser.add_argument("--fresh", action="store_true", help="ignore existing checkpoints in out_dir (they are kept until overwritten)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from sciffusion.recipes import read_config, train_from_config

    cfg = read_config(args.config)
    cfg.setdefault("training", {})
    if args.steps is not None:
        cfg["training"]["steps"] = args.steps
    if args.out is not None:
        cfg["training"]["out_dir"] = args.out
    trainer = train_from_config(cfg, progress=not args.no_progress, resume=not args.fresh)
    if not trainer.dist.is_main:
        return 0
    last = trainer.last_record or {}
    head = f"trained to step {trainer.step}; last loss" if trainer.history else \
        f"already trained to step {trainer.step} (nothing to do); last recorded loss"
    print(head + (f" {last['loss']:.4f}" if "loss" in last else " unknown (not in the checkpoint)")
          + (f", validation loss {last['val_loss']:.4f}" if "val_loss" in last else "")
          + f"; checkpoints in {trainer.out_dir}"
          + (f" (DDP over {trainer.dist.world} processes)" if trainer.dist.active else ""))
    return 0
