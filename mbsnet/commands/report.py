"""`mbsnet report`: the comparison report of every ablation from the results tree."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import load_config
from ..errors import DataError
from . import _options as options

logger = logging.getLogger(__name__)

HELP = ("Compare the ablations: results/report.html (self-contained), with summary.tsv and "
        "summary.md beside it.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_config(parser)
    parser.add_argument("--results", default="results", help="results tree (default: %(default)s)")
    parser.add_argument("--out", default=None,
                        help="HTML to write (default: RESULTS/report.html); summary.tsv and "
                             "summary.md go beside it")


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_writable
    from ..report import write_report

    config = load_config(args.config)
    results = Path(args.results)
    if not results.is_dir():
        raise DataError(f"results directory {results} does not exist (run the workflow first)")
    out = Path(args.out) if args.out else results / "report.html"
    check_writable(out.parent)
    paths = write_report(config, results, out, project_dir=Path.cwd())
    logger.info("report: wrote " + ", ".join(str(p) for p in paths))
    return 0
