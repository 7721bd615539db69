"""The ``sciffusion`` command: a thin dispatcher over :mod:`sciffusion.commands`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from sciffusion import __version__, commands


def _command_modules():
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            yield module


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
        p.set_defaults(_run=module.run)
    return parser


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except (UserError, FileNotFoundError, FileExistsError, ValueError, KeyError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"sciffusion {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
