"""`mbsnet params`: parameter counts of every configured ablation and the discriminator."""

from __future__ import annotations

import argparse
import json

from ..config import load_config
from ..models.params import config_parameters, format_table
from . import _options as options

HELP = "Print the parameter count of every configured ablation (total and per module)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_config(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    counts = config_parameters(load_config(args.config))
    # the counts are the command's output, printed even with -q (see `mbsnet score`)
    print(json.dumps(counts, indent=2) if args.json else format_table(counts))
    return 0
