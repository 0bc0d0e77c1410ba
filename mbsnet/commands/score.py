"""`mbsnet score CLEAN.wav DEGRADED.wav [--json]`: every metric of one pair."""

from __future__ import annotations

import argparse
import json
import math

from ..metrics import METRICS, score_pair

HELP = "Score one degraded/enhanced WAV against its clean reference with every metric."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clean", help="clean reference WAV (16 kHz mono)")
    parser.add_argument("degraded", help="degraded or enhanced WAV (16 kHz mono)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object keyed by metric (NaN as null)")
    parser.add_argument("--trim", action="store_true",
                        help="when the lengths differ, score the overlap (the output says so); "
                        "without it a length mismatch is an error")


def run(args: argparse.Namespace) -> int:
    # The scores are the command's output, not messages about its work: printed even
    # with -q, so that `mbsnet -q score --json ... | jq` still has its input.
    row = score_pair(args.clean, args.degraded, trim=args.trim)
    note = _trim_note(args.clean, args.degraded) if args.trim else ""
    if args.json:
        values = {m: None if math.isnan(row[m]) else row[m] for m in METRICS}
        for key, text in (("error", row["error"]), ("note", note)):
            if text:
                values[key] = text
        print(json.dumps(values))
    else:
        for metric in METRICS:
            print(f"{metric:8s} {row[metric]:.4f}")
        for key, text in (("error", row["error"]), ("note", note)):
            if text:
                print(f"{key:8s} {text}")
    return 0


def _trim_note(clean: str, degraded: str) -> str:
    """What --trim did, or "" when the lengths were equal."""
    from ..wavio import audio_info

    lengths = audio_info(clean).frames, audio_info(degraded).frames
    if lengths[0] == lengths[1]:
        return ""
    return (f"scored the first {min(lengths)} samples only: {clean} has {lengths[0]}, "
            f"{degraded} {lengths[1]}")
