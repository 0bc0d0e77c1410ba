"""`mbsnet evaluate`: enhance the test split with a trained model (or take the noisy input)
and write eval/metrics.tsv and summary.json, and the report's example utterance enhanced in
eval/example/."""

from __future__ import annotations

import argparse
import logging

from ..atomic import check_writable
from ..device import select_device, set_threads
from ..errors import UsageError
from ..evaluation.evaluate import EXAMPLE_DIR, NOISY, evaluate, evaluate_saved, summary_line
from . import _options as options

logger = logging.getLogger(__name__)

HELP = "Enhance and score a split of the corpus (or score the noisy input with --noisy)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model.pt written by `mbsnet train`")
    source.add_argument("--noisy", action="store_true",
                        help="score the unprocessed noisy input (the 'noisy' system)")
    parser.add_argument("--data", required=True, help="manifest.tsv of the prepared corpus")
    parser.add_argument("--out", required=True, help="output directory (metrics.tsv, summary.json)")
    parser.add_argument("--split", default="test", help="manifest split to score (default: test)")
    parser.add_argument("--workers", type=int, default=2, help="scoring processes (default: 2)")
    parser.add_argument("--save-wavs", action="store_true",
                        help="also write the enhanced WAVs to OUT/wavs/")
    parser.add_argument("--example", action="append", metavar="UTT_ID",
                        help="an utterance whose enhanced WAV is always kept, in "
                             f"OUT/{EXAMPLE_DIR}/UTT_ID.wav, for the report; repeatable "
                             "(default: the split's first utterance, the report's default; "
                             "the workflow passes report.example_utterance when it is set)")
    options.add_device(parser, "where the model runs (default: auto)", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for enhancement (default: PyTorch's choice)")


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.threads is not None:
        set_threads(args.threads)
    check_writable(args.out)
    if args.noisy:
        if args.save_wavs or args.example:
            option = "--save-wavs" if args.save_wavs else "--example"
            raise UsageError(f"{option} needs --model (the noisy input is already on disk)")
        summary = evaluate(args.data, args.out, system=NOISY, split=args.split,
                           workers=args.workers)
    else:
        summary = evaluate_saved(args.model, args.data, args.out,
                                 device=select_device(args.device, key="--device"),
                                 split=args.split, workers=args.workers,
                                 save_wavs=args.save_wavs, examples=args.example)
    logger.info(summary_line(summary, args.out, examples=not args.noisy))
    return 0
