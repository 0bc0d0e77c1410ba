"""The report's tables as numbers: the headline (metrics and costs per system), the tests
against the baseline, the means per noise type and the training curves."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from .. import stats
from ..metrics.registry import METRIC_SPECS
from .costs import COST_SPECS, PARAMS_TOLERANCE, system_costs
from .loading import Missing, Results, System, run_scores, system_scores, why_unscored


@dataclass
class HeadlineRow:
    system: str
    seeds: int                                  # scored seeds
    n: int                                      # test utterances scored
    metrics: dict[str, stats.Estimate | Missing]
    costs: dict[str, float | Missing | None]    # None: not applicable (noisy input)
    best: set[str] = field(default_factory=set)

    @property
    def params_mismatch(self) -> bool:
        ratio = self.costs.get("params_ratio")
        return isinstance(ratio, float) and abs(ratio - 1.0) > PARAMS_TOLERANCE


def headline(results: Results) -> list[HeadlineRow]:
    """One row per system: metric estimates and cost columns, best values marked."""
    rows = [_headline_row(s) for s in results.systems.values()]
    for spec in METRIC_SPECS.values():
        col = spec.name
        _mark_best(rows, col, [m.mean if isinstance(m, stats.Estimate) else math.nan
                               for m in (r.metrics[col] for r in rows)],
                   higher=spec.higher_is_better)
    for cost in COST_SPECS.values():
        if cost.lower_is_better is None:
            continue
        col = cost.name
        _mark_best(rows, col, [c if isinstance(c, float) else math.nan
                               for c in (r.costs[col] for r in rows)],
                   higher=not cost.lower_is_better)
    return rows


def _mark_best(rows: list[HeadlineRow], col: str, values: list[float], higher: bool) -> None:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2 or min(finite) == max(finite):
        return   # nothing to choose between
    best = max(finite) if higher else min(finite)
    for row, value in zip(rows, values, strict=True):
        if value == best:
            row.best.add(col)


def _headline_row(system: System) -> HeadlineRow:
    runs = system.scored_runs
    if runs:
        frames = [run_scores(r) for r in runs]
        metrics = {m: _estimate([f[m] for f in frames]) for m in METRIC_SPECS}
        n = len(set().union(*(f.index for f in frames)))
    else:
        why = why_unscored(system)
        metrics, n = {m: why for m in METRIC_SPECS}, 0
    return HeadlineRow(system.name, len(runs), n, metrics, system_costs(system))


def _estimate(per_seed: list[pd.Series]) -> stats.Estimate | Missing:
    est = stats.seed_estimate(per_seed)
    return est if est.n else Missing("failed on every utterance (see Health)")


@dataclass
class SignificanceRow:
    system: str
    metric: str
    result: stats.Comparison | Missing
    p_holm: float = math.nan
    detectable: float = math.nan    # with 80 % power at the corrected level

    @property
    def significant(self) -> bool:
        return math.isfinite(self.p_holm) and self.p_holm < stats.ALPHA


def significance(results: Results) -> list[SignificanceRow] | Missing:
    """Each ablation against the baseline on the tested metrics, Holm-corrected together."""
    base = results.systems.get(results.baseline)
    if base is None:
        return Missing(f"baseline '{results.baseline}' is not a configured ablation")
    base_scores = system_scores(base)
    if isinstance(base_scores, Missing):
        return Missing(f"baseline {base.name} has no scores: {base_scores.reason}",
                       base_scores.detail)
    tested = [spec.name for spec in METRIC_SPECS.values() if spec.tested]
    rows = []
    for system in results.ablations:
        if system.name == base.name:
            continue
        scores = system_scores(system)
        for metric in tested:
            result = scores if isinstance(scores, Missing) else \
                stats.paired_comparison(scores[metric], base_scores[metric])
            rows.append(SignificanceRow(system.name, metric, result))
    p = [r.result.p if isinstance(r.result, stats.Comparison) else math.nan for r in rows]
    tests = sum(math.isfinite(x) for x in p)
    for row, adjusted in zip(rows, stats.holm(p), strict=True):
        row.p_holm = adjusted
        if isinstance(row.result, stats.Comparison):
            row.detectable = row.result.detectable(tests)
    return rows


def noise_table(results: Results, metric: str) -> pd.DataFrame | Missing:
    """Mean ``metric`` per noise type (rows) and system (columns)."""
    columns = {}
    for system in results.systems.values():
        scores = system_scores(system)
        if isinstance(scores, pd.DataFrame):
            columns[system.name] = scores.groupby("noise")[metric].mean()
    if not columns:
        return Missing("no system has metrics")
    table = pd.DataFrame(columns)
    table.insert(0, "n", _noise_counts(results))
    return table


def _noise_counts(results: Results) -> pd.Series:
    for system in results.systems.values():
        scores = system_scores(system)
        if isinstance(scores, pd.DataFrame):
            return scores.groupby("noise").size()
    return pd.Series(dtype=int)


def training_curves(results: Results) -> dict[str, list[pd.DataFrame]]:
    """Epoch lines of each ablation's train logs (one frame per seed with epochs logged)."""
    curves = {}
    for system in results.ablations:
        frames = []
        for run in system.runs:
            epochs = [r for r in run.train_log if r.get("kind") == "epoch"]
            if epochs:
                frames.append(pd.DataFrame(epochs).sort_values("epoch"))
        if frames:
            curves[system.name] = frames
    return curves
