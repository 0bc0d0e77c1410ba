"""The steps of the ablation study as the report shows them: HTML cells, Markdown tables and
summary.tsv columns."""

from __future__ import annotations

import math
from typing import Any

from .. import stats
from ..metrics.registry import METRIC_SPECS
from .costs import COST_SPECS
from .formatting import (
    Cell,
    decimals,
    fmt_cost,
    fmt_cost_delta,
    fmt_detectable,
    fmt_diff,
    fmt_p,
    merge_missing,
    no_difference,
    unit_suffix,
)
from .loading import Missing
from .steps import COST_CHANGE, STEP_COSTS, CostStep, Detectable, MetricStep, StepTable

SAME_SETTINGS = "the same model and training settings"
METHOD = ("paired t-test size with the Wilcoxon test's asymptotic relative efficiency 3/π: "
          "(t[1 − α/(2m), n − 1] + t[0.80, n − 1]) · s_d / √(n · 3/π), with s_d the standard "
          "deviation of the paired differences and α/m Bonferroni's level, Holm's strictest")


def step_name(parent: str, child: str) -> str:
    return f"{parent} → {child}"


def metric_cell(metric: str, cell: MetricStep) -> Cell:
    """Difference ± CI; then the corrected p-value, and for a test that found nothing the
    size it would have found; with several seeds, the difference over seeds."""
    result = cell.utterances
    if isinstance(result, Missing):
        return Cell(str(result), "missing", result.full)
    out = Cell(fmt_diff(metric, result.mean_diff, result.ci95),
               title=f"n = {result.n} paired utterances; p = {fmt_p(result.p)}")
    if result.note:
        out.sub.append(result.note)
    else:
        out.sub.append(f"p (Holm) {fmt_p(cell.p_holm)}")
        if cell.significant:
            out.cls = "gain" if METRIC_SPECS[metric].better(result.mean_diff) else "loss"
        else:
            out.sub.append(no_difference(metric, cell.detectable))
    if cell.seeds is not None:
        seeds = cell.seeds
        text = f"over {seeds.n} seeds: {fmt_diff(metric, seeds.mean_diff, seeds.ci95)}"
        if math.isfinite(cell.seeds_p_holm):
            text += f", p (Holm) {fmt_p(cell.seeds_p_holm)}"
        out.sub.append(text)
    return out


def cost_cell(col: str, cost: CostStep | Missing) -> Cell:
    if isinstance(cost, Missing):
        return Cell(str(cost), "missing", cost.full)
    ratio = cost.ratio
    cls = "" if not math.isfinite(ratio) or abs(ratio - 1) <= COST_CHANGE else \
        "gain" if COST_SPECS[col].better(cost.delta) else "loss"
    return Cell(fmt_cost_delta(col, cost.delta), cls,
                f"{fmt_cost(col, cost.parent)} → {fmt_cost(col, cost.child)}",
                sub=[f"×{ratio:.2f}"] if math.isfinite(ratio) else [])


def steps_context(table: StepTable | Missing,
                  detect: dict[str, Detectable | Missing]) -> dict[str, Any]:
    """The template's "What each change buys" and "What the test set can detect"."""
    if isinstance(table, Missing):
        return {"missing": str(table), "rows": [], "detect": []}
    rows = [{"name": step_name(step.parent, step.child), "child": step.child,
             "change": step.change or [SAME_SETTINGS],
             "cells": merge_missing([metric_cell(m, step.metrics[m]) for m in METRIC_SPECS]
                                    + [cost_cell(c, step.costs[c]) for c in STEP_COSTS])}
            for step in table.steps]
    return {"missing": "", "rows": rows, "paths": [" → ".join(p) for p in table.paths],
            "metrics": [spec.label for spec in METRIC_SPECS.values()],
            "costs": [COST_SPECS[c].label for c in STEP_COSTS],
            "tests": table.tests, "several_seeds": table.several_seeds,
            "detect": [_detect_row(m, row) for m, row in detect.items()], "method": METHOD}


def _detect_row(metric: str, row: Detectable | Missing) -> dict[str, Any]:
    label = METRIC_SPECS[metric].label
    if isinstance(row, Missing):
        return {"metric": label, "missing": str(row)}
    d = decimals(metric)
    unit = unit_suffix(metric)
    return {"metric": label, "missing": "", "pairs": row.pairs,
            "sd": f"{row.sd:.{d}f}{unit}", "corrected": fmt_detectable(metric, row.corrected),
            "range": f"{row.low:.{d}f}–{row.high:.{d}f}{unit}",
            "single": fmt_detectable(metric, row.single),
            "resolution": f"{row.resolution:g}{unit}" if math.isfinite(row.resolution) else "—",
            "needed": f"{row.pairs_needed:,}" if row.pairs_needed else "—"}


# --------------------------------------------------------------------------- Markdown


def _markdown_metric(metric: str, cell: MetricStep) -> str:
    result = cell.utterances
    if isinstance(result, Missing):
        return str(result).replace("|", "/")
    text = fmt_diff(metric, result.mean_diff, result.ci95)
    if result.note:
        return f"{text} (not tested)"
    if cell.significant:
        return f"**{text}** (p {fmt_p(cell.p_holm)})"
    return f"{text} (n.s.; {fmt_detectable(metric, cell.detectable)})"


def steps_markdown(table: StepTable | Missing, detect: dict[str, Detectable | Missing]) -> str:
    """The two step sections of summary.md."""
    lines = ["## What each change buys", ""]
    if isinstance(table, Missing):
        return "\n".join(lines + [str(table), ""])
    lines += ["Lineage: " + "; ".join(" → ".join(p) for p in table.paths), ""]
    header = ["Step", "Change", *(spec.label for spec in METRIC_SPECS.values()),
              *(f"Δ {COST_SPECS[c].label}" for c in STEP_COSTS)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for step in table.steps:
        costs = [str(cost) if isinstance(cost, Missing) else
                 f"{fmt_cost_delta(c, cost.delta)} (×{cost.ratio:.2f})"
                 for c, cost in step.costs.items()]
        cells = [step_name(step.parent, step.child), "; ".join(step.change or [SAME_SETTINGS]),
                 *(_markdown_metric(m, step.metrics[m]) for m in METRIC_SPECS), *costs]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines += ["", f"Child − parent: mean paired difference ± 95 % CI over the test utterances "
              f"(seed-averaged); paired Wilcoxon signed-rank tests, Holm-corrected over all "
              f"{table.tests}; bold: significant (p (Holm) < {stats.ALPHA}); n.s.: no difference "
              f"detected, with the smallest difference the test set detects (80 % power at the "
              f"corrected level). Costs: child − parent (× child / parent)."]
    lines += ["", "## What the test set can detect", "",
              "| Metric | Pairs | SD of the paired differences | Detectable, "
              f"{table.tests} tests | Detectable, one test | Pairs to detect |",
              "|---|---|---|---|---|---|"]
    for metric, row in detect.items():
        view = _detect_row(metric, row)
        if view["missing"]:
            lines.append(f"| {view['metric']} | {view['missing']} | | | | |")
        else:
            lines.append(f"| {view['metric']} | {view['pairs']} | {view['sd']} | "
                         f"{view['corrected']} | {view['single']} | "
                         f"{view['needed']} for {view['resolution']} |")
    lines += ["", f"The smallest true difference found with 80 % power; method: {METHOD}. "
              "SD: the median over the steps."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- summary.tsv


def step_columns(table: StepTable | Missing) -> dict[str, dict[str, Any]]:
    """summary.tsv's step columns of each ablation (the step from its parent to it):
    ``parent``, ``change``, then per metric ``step_M`` (mean paired difference),
    ``step_M_ci95``, ``step_M_n``, ``step_M_p``, ``step_M_p_holm``, ``step_M_detectable``
    (with several seeds also ``step_M_seeds``, ``step_M_seeds_ci95``), per cost
    ``step_C`` (child − parent), and ``step_missing`` (why cells are empty)."""
    if isinstance(table, Missing):
        return {}
    out = {}
    for step in table.steps:
        rec: dict[str, Any] = {"parent": step.parent,
                               "change": "; ".join(step.change or [SAME_SETTINGS])}
        missing: dict[str, list[str]] = {}    # reason -> its columns
        for metric, cell in step.metrics.items():
            result = cell.utterances
            if isinstance(result, Missing):
                missing.setdefault(result.full, []).append(metric)
                result = stats.Comparison(0, math.nan, math.nan, math.nan)
            rec.update({f"step_{metric}": result.mean_diff, f"step_{metric}_ci95": result.ci95,
                        f"step_{metric}_n": result.n, f"step_{metric}_p": result.p,
                        f"step_{metric}_p_holm": cell.p_holm,
                        f"step_{metric}_detectable": cell.detectable})
            if table.several_seeds:
                seeds = cell.seeds or stats.Comparison(0, math.nan, math.nan, math.nan)
                rec.update({f"step_{metric}_seeds": seeds.mean_diff,
                            f"step_{metric}_seeds_ci95": seeds.ci95})
        for col, cost in step.costs.items():
            if isinstance(cost, Missing):
                missing.setdefault(cost.full, []).append(col)
            rec[f"step_{col}"] = cost.delta if isinstance(cost, CostStep) else math.nan
        rec["step_missing"] = "; ".join(f"{','.join(cols)}: {why}"
                                        for why, cols in missing.items())
        out[step.child] = rec
    return out
