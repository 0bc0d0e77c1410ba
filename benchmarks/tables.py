"""What every benchmark script prints and records beside its rows: a plain text table and
a description of the machine it ran on."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence

import torch


def text_table(lines: Sequence[Sequence[object]]) -> str:
    """``lines`` (the header first) as left-aligned columns, a rule under the header."""
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
           for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def machine() -> dict:
    """Platform, CPU count, torch and Python versions, and the load average now."""
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
