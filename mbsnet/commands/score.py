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


def run(args: argparse.Namespace) -> int:
    row = score_pair(args.clean, args.degraded)
    if args.json:
        values = {m: None if math.isnan(row[m]) else row[m] for m in METRICS}
        if row["error"]:
            values["error"] = row["error"]
        print(json.dumps(values))
    else:
        for metric in METRICS:
            print(f"{metric:8s} {row[metric]:.4f}")
        if row["error"]:
            print(f"error    {row['error']}")
    return 0
