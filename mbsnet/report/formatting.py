"""How the report writes numbers: estimates, differences, counts, durations, p-values."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import stats
from ..metrics.registry import METRIC_SPECS
from .costs import COST_SPECS


@dataclass
class Cell:
    text: str
    cls: str = ""
    title: str = ""
    colspan: int = 1
    sub: list[str] = field(default_factory=list)   # smaller lines under the text


def merge_missing(cells: list[Cell]) -> list[Cell]:
    """Adjacent "missing" cells with the same reason as one cell spanning their columns."""
    merged: list[Cell] = []
    for cell in cells:
        if merged and cell.cls == "missing" and merged[-1].cls == "missing" \
                and merged[-1].title == cell.title:
            merged[-1].colspan += cell.colspan
        else:
            merged.append(cell)
    return merged


def decimals(metric: str) -> int:
    """The decimals a metric's values are written with."""
    return METRIC_SPECS[metric].decimals


def unit_suffix(metric: str) -> str:
    """`` dB``: what follows a metric's values, '' for a metric without a unit."""
    unit = METRIC_SPECS[metric].unit
    return f" {unit}" if unit else ""


def fmt_estimate(metric: str, est: stats.Estimate) -> str:
    d = decimals(metric)
    text = f"{est.mean:.{d}f}"
    if math.isfinite(est.ci95):
        text += f" ± {est.ci95:.{d}f}"
    return text


def fmt_seeds(metric: str, est: stats.Estimate) -> str:
    """The spread across seeds, '' for a single seed."""
    if est.seeds < 2:
        return ""
    return f"sd {est.seed_sd:.{decimals(metric)}f} over {est.seeds} seeds"


def fmt_count(value: float) -> str:
    for scale, suffix in [(1e9, " G"), (1e6, " M"), (1e3, " k")]:
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}"


def fmt_min_s(seconds: float) -> str:
    """Whole seconds as minutes:seconds, as the "(min:s)" headers say: ``6:05``,
    ``62:05`` for 3725 s, ``0:05``."""
    minutes, secs = divmod(round(abs(seconds)), 60)
    return f"{'-' if seconds < 0 and minutes + secs else ''}{minutes}:{secs:02d}"


#: how a cost's values are written (:attr:`CostSpec.style`)
STYLES: dict[str, Callable[[float], str]] = {
    "count": fmt_count,                         # 2.41 M
    "ratio": lambda value: f"×{value:.2f}",     # ×1.45
    "grouped": lambda value: f"{value:,.0f}",   # 14,000
    "general": lambda value: f"{value:.3g}",    # 0.25
    "min:s": fmt_min_s,                         # 62:05
}


def fmt_cost(col: str, value: float) -> str:
    """A cost's value in its column's style."""
    return STYLES[COST_SPECS[col].style](value)


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "—"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def fmt_diff(metric: str, value: float, ci95: float = math.nan) -> str:
    """A signed difference in the metric's decimals, with its CI half-width if finite."""
    d = decimals(metric)
    text = f"{value:+.{d}f}" if math.isfinite(value) else "—"
    return text + (f" ± {ci95:.{d}f}" if math.isfinite(ci95) else "")


def fmt_detectable(metric: str, size: float) -> str:
    """``≥ 0.62 dB``: the smallest difference a test detects (80 % power)."""
    return f"≥ {size:.{decimals(metric)}f}{unit_suffix(metric)}" \
        if math.isfinite(size) else "—"


def no_difference(metric: str, detectable: float) -> str:
    """The verdict of a test that found nothing, with the size it would have found."""
    if not math.isfinite(detectable):
        return "no difference detected"
    return f"no difference detected; the test set can detect {fmt_detectable(metric, detectable)}"


def fmt_cost_delta(col: str, delta: float) -> str:
    """A signed cost change in the cost's own format (``+895.42 k``, ``-1,234``)."""
    sign = "+" if delta > 0 else "-" if delta < 0 else "±"
    return sign + fmt_cost(col, abs(delta))
