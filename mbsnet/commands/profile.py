"""`mbsnet profile`: the pre-flight profile of one ablation, and its memory budget check."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from . import _options as options

logger = logging.getLogger(__name__)

HELP = ("Measure one ablation before training (parameters, inference MACs/FLOPs per second, "
        "peak memory and median time of a full training step, inference real-time factor) "
        "on the training device; write OUT (profile.json), or fail without writing it when "
        "the peak exceeds resources.gpu_memory_gb.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_config(parser)
    options.add_ablation(parser)
    parser.add_argument("--out", required=True, help="profile.json to write")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: resources.threads of the config)")
    options.add_device(parser, "device to measure on (default: training.device of the ablation)")
    parser.add_argument("--warmup-steps", type=int, default=1,
                        help="training steps on a batch of one before measuring "
                             "(default: %(default)s)")
    parser.add_argument("--steps", type=int, default=1,
                        help="timed training steps; the median is reported (default: %(default)s)")
    parser.add_argument("--inference-runs", type=int, default=3,
                        help="timed inference runs for the real-time factor (default: %(default)s)")
    parser.add_argument("--no-budget-check", action="store_true",
                        help="write the profile even above the budget (within_budget: false); "
                             "for benchmarks, never before training")


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_writable, write_json
    from ..config import ablation_config, load_config
    from ..console import TO_STDOUT
    from ..device import select_device, set_threads
    from ..errors import UsageError
    from ..profiling import ProfileOptions, check_budget, profile_ablation

    config = load_config(args.config)
    training = ablation_config(config, args.ablation)["training"]
    try:
        options = ProfileOptions(args.warmup_steps, args.steps, args.inference_runs)
    except ValueError as exc:
        raise UsageError(f"{exc} (--warmup-steps, --steps, --inference-runs)") from exc
    set_threads(args.threads if args.threads is not None else config["resources"]["threads"])
    check_writable(Path(args.out).parent)
    device = select_device(args.device or training["device"])
    profile = profile_ablation(config, args.ablation, device, options, log=logger.info)
    for warning in profile["warnings"]:
        logger.warning(f"[{args.ablation}] warning: {warning}", extra=TO_STDOUT)
    if not args.no_budget_check:
        check_budget(profile)
    write_json(args.out, profile)
    logger.info(f"[{args.ablation}] wrote {args.out} in {profile['profile_seconds']:.0f} s")
    return 0
