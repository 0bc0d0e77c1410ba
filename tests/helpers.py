"""Paths the test files share (no package import, so any test can use them)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository root: config.yaml, the Snakefile, benchmarks/, scripts/."""

BIN = Path(sys.executable).parent
"""The environment's scripts (snakemake, torchrun), run by path so tests need no PATH."""

TINY_CONFIG = ROOT / "tests" / "configs" / "tiny.yaml"
"""The end-to-end tests' config: two small ablations, a few steps, a few utterances."""
