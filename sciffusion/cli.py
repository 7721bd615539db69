"""The ``sciffusion`` command: a thin dispatcher over :mod:`sciffusion.commands`.

Every sub-command also takes ``--threads N`` (torch CPU threads) and ``--debug`` (show the
traceback of an input error; also ``SCIFFUSION_DEBUG=1``). Errors in the user's input (options,
files, data) print one line and exit with status 2; any other exception is a bug and propagates
with its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import sys

from sciffusion import __version__, commands
from sciffusion.commands._common import UserError

__all__ = ["UserError", "build_parser", "main"]

# what a command raises for bad input; anything else is a bug and keeps its traceback
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, ValueError, KeyError, TypeError)
DEBUG_HINT = "(--debug or SCIFFUSION_DEBUG=1 shows the traceback)"
THREADS_HELP = ("torch CPU threads (default: torch's own, one per core); on a machine shared with other jobs "
                "1 or 2 is often several times faster")


def _command_modules():
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            yield module


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--threads`` and ``--debug``, unless the command defines them itself."""
    common = [(("--threads",), dict(type=_positive_int, default=None, metavar="N", help=THREADS_HELP)),
              (("--debug",), dict(action="store_true", help="show the traceback of an error (or SCIFFUSION_DEBUG=1)"))]
    for flags, kwargs in common:
        with contextlib.suppress(argparse.ArgumentError):  # the command has its own
            parser.add_argument(*flags, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sciffusion",
        description="Diffusion emulators, posterior samplers and ensemble verification.",
    )
    parser.add_argument("--version", action="version", version=f"sciffusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        _add_common_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _message(exc: BaseException) -> str:
    """The one-line text of ``exc`` (a KeyError's own str() is the quoted key only)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0
    if getattr(args, "threads", None) is not None:
        import torch  # here, not at the top: `sciffusion --help` stays fast

        torch.set_num_threads(args.threads)
    try:
        return int(args._run(args) or 0)
    except USER_ERRORS as exc:
        if getattr(args, "debug", False) or os.environ.get("SCIFFUSION_DEBUG", "").strip() not in ("", "0"):
            raise
        print(f"sciffusion {args.command}: error: {_message(exc)}\n  {DEBUG_HINT}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
