"""`mbsnet params`: parameter counts of every configured ablation and the discriminator."""

from __future__ import annotations

import argparse
import json

from ..config import load_config
from ..models import Discriminator, build_model, parameter_report

HELP = "Print the parameter count of every configured ablation (total and per module)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config.yaml",
                        help="config file (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def collect(config: dict) -> dict:
    """``{"ablations": {name: params report}, "discriminator": {...}}`` for a resolved config."""
    ablations = {}
    for name, entry in config["ablations"].items():
        model = build_model(entry["model"])
        ablations[name] = parameter_report(model, entry.get("claimed_params"))
    ndf = config.get("training", {}).get("discriminator_ndf", 16)
    discriminator = {"ndf": ndf, **parameter_report(Discriminator(ndf))}
    return {"ablations": ablations, "discriminator": discriminator}


def format_table(counts: dict) -> str:
    lines = []
    for name, report in counts["ablations"].items():
        claim = ""
        if report["claimed"]:
            claim = f"  (claimed {report['claimed']:,}; measured/claimed {report['ratio']:.2f})"
        lines.append(f"{name}: {report['total']:,} parameters{claim}")
        lines += [f"    {module:<12}{n:>12,}" for module, n in report["per_module"].items()]
    disc = counts["discriminator"]
    lines.append(f"discriminator (ndf {disc['ndf']}): {disc['total']:,} parameters")
    lines += [f"    {module:<12}{n:>12,}" for module, n in disc["per_module"].items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    counts = collect(load_config(args.config))
    print(json.dumps(counts, indent=2) if args.json else format_table(counts))
    return 0
