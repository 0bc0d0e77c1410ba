"""The `mbsnet` command line. Each sub-command lives in mbsnet/commands/<name>.py and
defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; what a command
says goes through :mod:`logging`, shown by :mod:`mbsnet.console` at the level of
``-q``/``-v``."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from . import __version__, commands
from .console import console, level_for
from .errors import MbsnetError, UsageError

logger = logging.getLogger(__name__)


def command_names() -> list[str]:
    """The sub-commands: every public module of mbsnet.commands (``_options`` is shared)."""
    return sorted(info.name for info in pkgutil.iter_modules(commands.__path__)
                  if not info.name.startswith("_"))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``only``, import just that sub-command (fast start-up)."""
    parser = argparse.ArgumentParser(
        prog="mbsnet", description="Band-split speech enhancement ablations: models, data, "
        "training, evaluation, profiling and the comparison report.")
    parser.add_argument("--version", action="version", version=f"mbsnet {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true",
                           help="show warnings and errors only")
    verbosity.add_argument("-v", "--verbose", action="store_true",
                           help="also show debug messages")
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


def _command_in(argv: list[str]) -> str | None:
    """The sub-command named in ``argv``: its first word that is not an option (the main
    parser's options take no value)."""
    first = next((word for word in argv if not word.startswith("-")), None)
    return first if first in command_names() else None


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; exit status 0, or :data:`RUNTIME_ERROR` / :data:`USAGE_ERROR`
    with a one-line message on stderr."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command_in(argv)).parse_args(argv)
    with console(level_for(args.quiet, args.verbose)):
        logger.debug(f"mbsnet {__version__}, Python {sys.version.split()[0]}: {args.command}")
        try:
            return int(args.handler(args) or 0)
        except MbsnetError as exc:
            logger.error(f"mbsnet {args.command}: error: {exc}")
            return USAGE_ERROR if isinstance(exc, UsageError) else RUNTIME_ERROR
        except OSError as exc:  # e.g. a write into a folder made read-only mid-run, a full disk
            where = f": {exc.filename}" if exc.filename else ""
            logger.error(f"mbsnet {args.command}: error: {exc.strerror or exc}{where}")
            return RUNTIME_ERROR


if __name__ == "__main__":
    sys.exit(main())
