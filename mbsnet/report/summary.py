"""The headline outside the page: summary.tsv (numbers) and summary.md (a Markdown table),
each with the step sections when the lineage has steps."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from .. import stats
from ..metrics.registry import METRIC_SPECS
from . import step_views
from .costs import COST_SPECS, PARAMS_TOLERANCE
from .formatting import decimals, fmt_cost, fmt_estimate
from .loading import Missing
from .steps import Detectable, StepTable
from .tables import HeadlineRow


def _missing_note(row: HeadlineRow) -> list[tuple[str, str]]:
    """(columns, reason) for the missing cells of a row, columns sharing a reason grouped."""
    by_reason: dict[str, list[str]] = {}
    for col, value in {**row.metrics, **row.costs}.items():
        if isinstance(value, Missing):
            by_reason.setdefault(value.full, []).append(col)
    return [(",".join(cols), reason) for reason, cols in by_reason.items()]


def summary_frame(rows: list[HeadlineRow],
                  table: StepTable | Missing | None = None) -> pd.DataFrame:
    """The headline as numbers (summary.tsv): NaN where missing, reasons in ``missing``;
    with ``table``, each ablation's step from its parent in the columns of
    :func:`step_views.step_columns` (empty for the noisy input and the roots)."""
    step_records = step_views.step_columns(table) if table is not None else {}
    blank = {key: "" if isinstance(value, str) else math.nan
             for record in list(step_records.values())[:1] for key, value in record.items()}
    records = []
    for row in rows:
        rec: dict[str, Any] = {"system": row.system, "seeds": row.seeds, "n": row.n}
        for metric in METRIC_SPECS:
            est = row.metrics[metric]
            if isinstance(est, Missing):
                est = stats.Estimate(math.nan, math.nan, 0)
            rec.update({metric: est.mean, f"{metric}_ci95": est.ci95,
                        f"{metric}_seed_sd": est.seed_sd})
        for col in COST_SPECS:
            value = row.costs[col]
            rec[col] = value if isinstance(value, float) else math.nan
        rec["missing"] = "; ".join(f"{cols}: {why}" for cols, why in _missing_note(row))
        rec.update(step_records.get(row.system, blank))
        records.append(rec)
    return pd.DataFrame(records)


#: the Markdown has no colours: a row whose parameter count is off the claim gets a ⚠
#: after the last claim-checked cost
_WARN_AFTER = [spec.name for spec in COST_SPECS.values() if spec.claim_checked][-1]


def _markdown_row(row: HeadlineRow, missing: Callable[[Missing], str]) -> str:
    """One headline row; ``missing(value)`` writes a missing cell (a numbered note)."""
    cells = [row.system]
    for metric in METRIC_SPECS:
        est = row.metrics[metric]
        text = missing(est) if isinstance(est, Missing) else fmt_estimate(metric, est) + (
            f" (sd {est.seed_sd:.{decimals(metric)}f})" if est.seeds > 1 else "")
        cells.append(f"**{text}**" if metric in row.best else text)
    for col in COST_SPECS:
        value = row.costs[col]
        text = "—" if value is None else missing(value) if isinstance(value, Missing) \
            else fmt_cost(col, value)
        if col == _WARN_AFTER and row.params_mismatch:
            text += " ⚠"
        cells.append(f"**{text}**" if col in row.best else text)
    return "| " + " | ".join(cells) + " |"


def summary_markdown(rows: list[HeadlineRow], table: StepTable | Missing | None = None,
                     detect: dict[str, Detectable | Missing] | None = None) -> str:
    """The headline as a Markdown table: best per column in bold, the reasons for missing
    cells as numbered notes below; with ``table`` and ``detect``, the step sections after."""
    header = ["System", *(spec.label for spec in METRIC_SPECS.values()),
              *(spec.label for spec in COST_SPECS.values())]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    reasons: dict[str, int] = {}

    def missing(value: Missing) -> str:
        return f"missing [{reasons.setdefault(value.full, len(reasons) + 1)}]"

    lines += [_markdown_row(row, missing) for row in rows]
    lines += ["", "Mean ± 95 % CI over test utterances; with several seeds, the mean over seeds "
              "and (sd) the spread of the seed means. Best per column in bold; ⚠: measured "
              "parameters differ from the claimed count by more than "
              f"{PARAMS_TOLERANCE:.0%}. Train wall time in minutes:seconds, the mean "
              "over seeds (summary.tsv: train_wall_seconds, in seconds)."]
    if reasons:
        lines.append("")
        lines += [f"[{n}] missing: {why.replace('|', '/')}  " for why, n in reasons.items()]
    text = "\n".join(lines) + "\n"
    if table is not None:
        text += "\n" + step_views.steps_markdown(table, detect or {})
    return text
