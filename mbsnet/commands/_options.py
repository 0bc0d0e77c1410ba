"""Options several commands share, defined once so that they read the same everywhere."""

from __future__ import annotations

import argparse

from ..device import DEVICE_CHOICES


def add_config(parser: argparse.ArgumentParser) -> None:
    """``--config``: the pipeline's config file (config.yaml by default) or the resolved
    config the workflow writes."""
    parser.add_argument("--config", default="config.yaml",
                        help="config file or the resolved config (default: %(default)s)")


def add_ablation(parser: argparse.ArgumentParser) -> None:
    """``--ablation``: one ablation of the config (required)."""
    parser.add_argument("--ablation", required=True, help="an ablation name from the config")


def add_device(parser: argparse.ArgumentParser, help: str, default: str | None = None) -> None:
    """``--device``: auto, cpu or cuda; ``default`` None means the ablation's
    training.device."""
    parser.add_argument("--device", choices=DEVICE_CHOICES, default=default, help=help)
