"""``sciffusion downscale CHECKPOINT COARSE -o OUT.zarr``: fine-grid ensembles from coarse fields.

CHECKPOINT is a :class:`~sciffusion.emulators.Downscaler` checkpoint (``Downscaler.save`` or the
``out_dir`` of ``Downscaler.fit``); COARSE a zarr store or netCDF file with the trained variables
on the coarse grid. Train with ``--train FINE --factor F`` instead: CHECKPOINT is then the run
directory to write (resumes if interrupted) and FINE the fine-grid training data. See
``docs/downscaling.md``.
"""

from sciffusion.commands._common import (UserError, add_ensemble_output_arguments, refuse_overlap, require_min,
                                         write_mode)

NAME = "downscale"
HELP = "downscale coarse fields to a fine-grid ensemble with a trained Downscaler (or train one with --train)"


def add_arguments(parser):
    parser.add_argument("checkpoint", help="Downscaler checkpoint directory (with --train: the run directory to write)")
    parser.add_argument("coarse", nargs="?", help="zarr store or netCDF file with the coarse fields")
    parser.add_argument("-o", "--out", help="output zarr store")
    parser.add_argument("--members", type=int, default=16, help="ensemble size (default 16)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: the checkpoint's calibrated sampler)")
    parser.add_argument("--eta", type=float, help="DDIM eta (default: the checkpoint's calibrated sampler)")
    parser.add_argument("--temperature", type=float,
                        help="noise temperature, > 0: scales the starting noise (default: the checkpoint's sampler, else 1)")
    add_ensemble_output_arguments(parser)
    train = parser.add_argument_group("training (--train)")
    train.add_argument("--train", metavar="FINE", help="train on the fine fields in FINE (zarr/netCDF) and write CHECKPOINT")
    train.add_argument("--factor", type=int, help="coarsening factor (with --train)")
    train.add_argument("--variables", nargs="+", help="variables to downscale (default: all on the grid)")
    train.add_argument("--sample-dim", default="time", help="dimension holding the samples (default time)")
    train.add_argument("--train-steps", type=int, default=2000, help="optimiser steps (default 2000)")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    require_min(args, 1, "members", "steps", "batch_size", "member_chunk", "factor", "train_steps")
    require_min(args, 0, "seed", "eta")
    if args.train:
        if args.factor is None:
            raise UserError("--train needs --factor")
        refuse_overlap(args.checkpoint, "CHECKPOINT (the run directory --train writes)", {"--train": args.train})
    else:
        if args.coarse is None or args.out is None:
            raise UserError("give COARSE and -o OUT.zarr (or --train FINE --factor F to train)")
        refuse_overlap(args.out, "-o", {"COARSE": args.coarse, "CHECKPOINT": args.checkpoint})

    from sciffusion.data import open_dataset
    from sciffusion.emulators import Downscaler

    if args.train:
        fine = open_dataset(args.train)
        model = Downscaler.fit(fine, args.variables, factor=args.factor, sample_dim=args.sample_dim,
                               steps=args.train_steps, out_dir=args.checkpoint, device=args.device,
                               progress=not args.no_progress)
        last = getattr(model, "last_record", None) or {}
        print(f"trained to step {last.get('step', args.train_steps)} (last loss {last.get('loss', float('nan')):.4f}); "
              f"checkpoint in {model.checkpoint}")
        return 0
    model = Downscaler.load(args.checkpoint, device=args.device)
    ds = model.downscale(open_dataset(args.coarse), args.members, steps=args.steps, eta=args.eta,
                         temperature=args.temperature, seed=args.seed, batch_size=args.batch_size, out=args.out, mode=write_mode(args),
                         member_chunk=args.member_chunk, progress=not args.no_progress, device=args.device, rng=args.rng)
    print(f"wrote {dict(ds.sizes)} to {args.out} (sampler {ds.attrs['sampler']})")
    return 0
