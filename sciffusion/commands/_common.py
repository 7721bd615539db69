"""What the sub-commands share: the user-error type, option checks and the output-path guard.

Cheap to import (no torch, no xarray): :mod:`sciffusion.cli` imports it while building the parser.
Every check here runs before a command writes or deletes anything, so a refused run leaves no
partial output behind to block the corrected rerun.
"""

from __future__ import annotations

# the names of sciffusion.diffusion.METHODS (not imported here: that would import torch for --help)
SAMPLER_METHODS = ("heun", "euler", "stochastic", "ddim", "dpmpp2m")
# sampler options that only one method uses: option -> that method
_METHOD_OPTIONS = {"churn": "stochastic", "eta": "ddim"}


class UserError(Exception):
    """An error caused by the user's input; printed as one line without a traceback."""


def option(dest: str) -> str:
    """The command-line spelling of an argparse ``dest``: ``member_chunk`` -> ``--member-chunk``."""
    return "--" + dest.replace("_", "-")


def require_min(args, minimum: int, *dests: str) -> None:
    """Refuse the options ``dests`` (argparse dest names) that are given and below ``minimum``, naming the option."""
    for dest in dests:
        value = getattr(args, dest, None)
        if value is not None and value < minimum:
            raise UserError(f"{option(dest)} must be >= {minimum}, got {value}")


def sampler_options(args) -> dict:
    """``--churn``/``--eta`` as sampler keywords; one given with a ``--method`` that does not use it is refused
    (it would be silently ignored), and so is a negative value."""
    options = {}
    for dest, method in _METHOD_OPTIONS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if args.method != method:
            chosen = f"--method {args.method}" if args.method else "the default sampler"
            raise UserError(f"{option(dest)} applies to --method {method} only, not {chosen}")
        if value < 0:
            raise UserError(f"{option(dest)} must be >= 0, got {value}")
        options[dest] = value
    return options


def add_checkpoint_arguments(parser, inputs: str, inputs_help: str, checkpoint_help: str) -> None:
    """The positional ``checkpoint`` and input file and the required ``-o/--out`` zarr store of a
    command that runs a trained model on a file."""
    parser.add_argument("checkpoint", help=checkpoint_help)
    parser.add_argument(inputs, help=inputs_help)
    parser.add_argument("-o", "--out", required=True, help="output zarr store")


def add_resume_arguments(parser, resume_help: str, overwrite_help: str = "replace an existing output store") -> None:
    """``--resume`` and ``--overwrite``, at most one of them (:func:`write_mode` reads them)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help=resume_help)
    group.add_argument("--overwrite", action="store_true", help=overwrite_help)


def write_mode(args) -> str:
    """The store mode of ``--resume`` / ``--overwrite`` / neither: ``"resume"``, ``"w"`` or ``"w-"``."""
    return "resume" if args.resume else "w" if args.overwrite else "w-"


def refuse_overlap(out, flag: str, inputs) -> None:
    """:func:`sciffusion.data.io.refuse_overlap`, imported when called (``--help`` stays cheap)."""
    from sciffusion.data.io import refuse_overlap as check

    check(out, flag, inputs)


def add_ensemble_output_arguments(parser) -> None:
    """The options of a command that writes a member-blocked ensemble store: seed, batch size,
    member chunk, device and ``--resume``/``--overwrite``."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--member-chunk", type=int, default=8, help="members per zarr chunk and per resumable block")
    parser.add_argument("--device", help="torch device (default: cpu)")
    parser.add_argument("--rng", choices=("torch", "philox"), default="torch",
                        help="member noise streams: a torch.Generator per member (default), or counter-based philox "
                             "streams drawn for a whole batch at once (much cheaper for large batches on a GPU; "
                             "other numbers, the same on CPU and GPU)")
    add_resume_arguments(parser, "continue an interrupted run, skipping member blocks already written")
