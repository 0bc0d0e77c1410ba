"""The `mbsnet` command line. Each sub-command lives in mbsnet/commands/<name>.py and
defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands
from .errors import MbsnetError, UsageError


def command_names() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(commands.__path__))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``only``, import just that sub-command (fast start-up)."""
    parser = argparse.ArgumentParser(
        prog="mbsnet", description="Band-split speech enhancement ablations: models, data, "
        "training, evaluation, profiling and the comparison report.")
    parser.add_argument("--version", action="version", version=f"mbsnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in command_names():
        if only is not None and name != only:
            sub.add_parser(name)
            continue
        module = importlib.import_module(f"{commands.__name__}.{name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(handler=module.run)
    return parser


#: Exit statuses: a runtime error (bad config, data, a failed write) and a usage error (bad
#: options: argparse's own, or :class:`~mbsnet.errors.UsageError`).
RUNTIME_ERROR, USAGE_ERROR = 1, 2


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; exit status 0, or :data:`RUNTIME_ERROR` / :data:`USAGE_ERROR`
    with a one-line message on stderr."""
    argv = sys.argv[1:] if argv is None else argv
    only = argv[0] if argv and argv[0] in command_names() else None
    args = build_parser(only).parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except MbsnetError as exc:
        print(f"mbsnet {args.command}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR if isinstance(exc, UsageError) else RUNTIME_ERROR
    except OSError as exc:  # e.g. a write into a folder made read-only mid-run, a full disk
        where = f": {exc.filename}" if exc.filename else ""
        print(f"mbsnet {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return RUNTIME_ERROR


if __name__ == "__main__":
    sys.exit(main())
