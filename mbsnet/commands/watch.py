"""`mbsnet watch -- snakemake ARGS...`: run Snakemake with one live view of the run."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import watch
from ..errors import UsageError

HELP = ("Run a Snakemake command (after --) showing one live view: jobs done of the total, "
        "each running training's epoch, step and ETA; Snakemake's whole output goes to a log.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results",
                        help="the results folder the workflow writes (default: results)")
    parser.add_argument("--log", type=Path, default=None,
                        help="where Snakemake's whole output goes "
                        "(default: RESULTS/logs/snakemake/<start time>.log)")
    parser.add_argument("--every", type=float, default=60.0,
                        help="seconds between two views when the output is not a terminal "
                        "(default: 60); on a terminal the view is redrawn in place")
    # not "command": the main parser keeps the sub-command's name there
    parser.add_argument("to_run", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                        help="the command to run, after --: snakemake --cores 4 report")


def run(args: argparse.Namespace) -> int:
    command = args.to_run[1:] if args.to_run[:1] == ["--"] else args.to_run
    if not command:
        raise UsageError("no command to run: mbsnet watch -- snakemake --cores 4 report")
    if args.every <= 0:
        raise UsageError(f"--every must be positive, got {args.every}")
    log = args.log or watch.default_log_path(args.results)
    return watch.run(command, log_path=log, results=args.results, every=args.every)
