"""`mbsnet train`: train one ablation with one seed (resumes automatically)."""

from __future__ import annotations

import argparse

from .. import layout
from . import _options as options

HELP = ("Train one ablation with one seed; a rerun resumes from OUT/checkpoint/last.pt. "
        "Writes OUT/model.pt, OUT/train_log.jsonl and OUT/train_summary.json. With "
        "training.devices N > 1, run it as N processes: torchrun --standalone "
        "--nproc-per-node N --no-python mbsnet train ..., or srun --ntasks N in a SLURM job.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_config(parser)
    options.add_ablation(parser)
    parser.add_argument("--seed", type=int, required=True, help="random seed")
    parser.add_argument("--out", required=True, help="run directory, e.g. results/NAME/seed0")
    parser.add_argument("--data", default=f"{layout.RESULTS}/{layout.MANIFEST}",
                        help="data manifest (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: resources.threads of the config)")
    options.add_device(parser, "training device (default: training.device of the ablation); "
                       "a run may resume on another device")


def run(args: argparse.Namespace) -> int:
    from ..config import ablation_config, load_config
    from ..train.loop import train

    config = load_config(args.config)
    if args.device is not None:
        ablation_config(config, args.ablation)  # an unknown ablation: the error names it
        config["ablations"][args.ablation].setdefault("training", {})["device"] = args.device
    train(config, args.ablation, args.seed, args.out, args.data, threads=args.threads)
    return 0
