"""`mbsnet enhance --model M.pt IN.wav|DIR --out DIR`: enhance users' own audio files."""

from __future__ import annotations

import argparse
import logging

from ..device import select_device
from ..evaluation.enhance import audio_files, enhance_files
from . import _options as options

logger = logging.getLogger(__name__)

HELP = "Enhance audio files (any sample rate and channel count) into 16 kHz mono WAVs."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="an audio file or a directory of audio files")
    parser.add_argument("--model", required=True, help="model.pt written by `mbsnet train`")
    parser.add_argument("--out", required=True, help="output directory")
    options.add_device(parser, "where the model runs (default: auto)", default="auto")


def run(args: argparse.Namespace) -> int:
    from ..models import load_model

    total = len(audio_files(args.input))
    model, _ = load_model(args.model, map_location=select_device(args.device, key="--device"))
    for done, path in enumerate(enhance_files(model, args.input, args.out), 1):
        logger.info(f"[{done}/{total}] {path}")
    return 0
