"""`mbsnet prepare`: write the corpus (results/data: WAV pairs and manifest.tsv)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load_config
from ..data.prepare import prepare_corpus
from . import _options as options

HELP = ("Prepare the corpus in results/data: the built-in synthetic one (data.source: "
        "synthetic) or a VoiceBank-DEMAND import (data.source: voicebank).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_config(parser)
    parser.add_argument("--out", default="results/data",
                        help="output folder (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes for mixing/resampling (default: resources.threads)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if the folder was made from the same data config")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    workers = args.workers if args.workers is not None else config["resources"]["threads"]
    prepare_corpus(config, Path(args.out), workers=workers, force=args.force)
    return 0
