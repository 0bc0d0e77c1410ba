"""The ablation study as steps: every ablation against its parent in the config's lineage.

For each parent → child step: what changed (:mod:`.changes`), the paired difference of every
metric over the test utterances (Wilcoxon signed-rank, Holm-corrected over every test of the
table) and over seeds when there are several, the smallest difference the test set can
detect, and what the change costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import stats
from ..config import ablation_config, ablation_parents
from ..metrics.registry import METRIC_SPECS
from .changes import describe_change
from .costs import COST_SPECS
from .loading import Missing, Results, System, run_scores, system_scores
from .tables import HeadlineRow

#: the costs a step changes (child minus parent), in the headline's order
STEP_COSTS = tuple(spec.name for spec in COST_SPECS.values() if spec.in_steps)
#: a cost that changes by more than this fraction is shown as cheaper or dearer
COST_CHANGE = 0.05


@dataclass
class MetricStep:
    """One metric across one step: child minus parent."""

    utterances: stats.Comparison | Missing      # paired over test utterances (seed-averaged)
    seeds: stats.Comparison | None = None       # paired over seeds; None with a single seed
    p_holm: float = math.nan
    seeds_p_holm: float = math.nan
    detectable: float = math.nan                # at the table's corrected level

    @property
    def significant(self) -> bool:
        return math.isfinite(self.p_holm) and self.p_holm < stats.ALPHA


@dataclass(frozen=True)
class CostStep:
    parent: float
    child: float

    @property
    def delta(self) -> float:
        return self.child - self.parent

    @property
    def ratio(self) -> float:
        return self.child / self.parent if self.parent else math.nan


@dataclass
class Step:
    parent: str
    child: str
    change: list[str]                           # empty: the same settings
    metrics: dict[str, MetricStep]
    costs: dict[str, CostStep | Missing]


@dataclass
class StepTable:
    steps: list[Step]
    paths: list[list[str]]                      # every chain from a root to a leaf
    tests: int                                  # utterance tests Holm corrects over
    several_seeds: bool


@dataclass(frozen=True)
class Detectable:
    """What the test set can detect on one metric, from the tested steps' paired spreads."""

    pairs: int                                  # median over the tested steps
    sd: float                                   # median SD of the paired differences
    corrected: float                            # at the table's corrected level
    single: float                               # one test at ALPHA
    low: float                                  # the steps' own detectable sizes: smallest
    high: float                                 # and largest
    resolution: float                           # a difference worth detecting
    pairs_needed: int                           # to detect it at the corrected level


def lineage(config: dict[str, Any]) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """The (parent, child) steps in reading order, each chain followed to its end before
    the next branch (config order among siblings), and every root → leaf chain."""
    parents = ablation_parents(config)
    names = list(config["ablations"])
    children = {name: [c for c in names if parents.get(c) == name] for name in names}
    order: list[tuple[str, str]] = []
    paths: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        if not children[name] and len(path) > 1:
            paths.append(path)
        for child in children[name]:
            order.append((name, child))
            visit(child, [*path, child])

    for root in (name for name in names if name not in parents):
        visit(root, [root])
    return order, paths


def step_table(results: Results, rows: list[HeadlineRow]) -> StepTable | Missing:
    """Every step of the lineage with its statistics; p-values Holm-corrected together."""
    order, paths = lineage(results.config)
    if not order:
        return Missing("no ablation has a parent: set `parent:` in the config, or a "
                       "report.baseline that is one of the ablations")
    costs = {row.system: row.costs for row in rows}
    several = len(results.config.get("seeds", [0])) > 1
    scores = {name: system_scores(results.systems[name])
              for name in {n for step in order for n in step}}
    steps = []
    for parent, child in order:
        metrics = {m: _metric_step(results.systems[parent], results.systems[child],
                                   scores[parent], scores[child], m, several)
                   for m in METRIC_SPECS}
        change = describe_change(ablation_config(results.config, parent),
                                 ablation_config(results.config, child))
        steps.append(Step(parent, child, change, metrics,
                          {c: _cost_step(parent, child, costs, c) for c in STEP_COSTS}))
    cells = [cell for step in steps for cell in step.metrics.values()]
    tests = _correct(cells)
    return StepTable(steps, paths, tests, several)


def _correct(cells: list[MetricStep]) -> int:
    """Holm over the utterance tests (and, separately, over the seed tests); each cell's
    detectable size at that level. Returns the number of utterance tests."""
    p = [c.utterances.p if isinstance(c.utterances, stats.Comparison) else math.nan
         for c in cells]
    tests = sum(math.isfinite(x) for x in p)
    for cell, adjusted in zip(cells, stats.holm(p), strict=True):
        cell.p_holm = adjusted
        if isinstance(cell.utterances, stats.Comparison):
            cell.detectable = cell.utterances.detectable(tests)
    seed_p = [c.seeds.p if c.seeds is not None else math.nan for c in cells]
    for cell, adjusted in zip(cells, stats.holm(seed_p), strict=True):
        cell.seeds_p_holm = adjusted
    return tests


def _unscored(name: str, why: Missing) -> Missing:
    return Missing(f"{name}: {why.reason}", why.detail)


def _metric_step(parent: System, child: System, parent_scores: pd.DataFrame | Missing,
                 child_scores: pd.DataFrame | Missing, metric: str, several: bool) -> MetricStep:
    if isinstance(parent_scores, Missing):
        return MetricStep(_unscored(parent.name, parent_scores))
    if isinstance(child_scores, Missing):
        return MetricStep(_unscored(child.name, child_scores))
    over_utterances = stats.paired_comparison(child_scores[metric], parent_scores[metric])
    return MetricStep(over_utterances, _seed_comparison(parent, child, metric) if several
                      else None)


def _seed_comparison(parent: System, child: System, metric: str) -> stats.Comparison:
    """The per-seed mean paired differences (utterances scored by both at that seed),
    compared over the seeds both have scored."""
    parent_runs = {run.seed: run_scores(run)[metric] for run in parent.scored_runs}
    diffs = {}
    for run in child.scored_runs:
        if run.seed in parent_runs:
            both = pd.concat([run_scores(run)[metric], parent_runs[run.seed]], axis=1,
                             join="inner").dropna()
            if len(both):
                diffs[run.seed] = float((both.iloc[:, 0] - both.iloc[:, 1]).mean())
    by_seed = pd.Series(diffs, dtype=float)
    return stats.paired_comparison(by_seed, pd.Series(0.0, index=by_seed.index), unit="seeds")


def _cost_step(parent: str, child: str, costs: dict[str, dict], key: str) -> CostStep | Missing:
    values = []
    for name in (parent, child):
        value = costs[name][key]
        if isinstance(value, Missing):
            return _unscored(name, value)
        if not isinstance(value, float):
            return Missing(f"{name} has no {key}")
        values.append(value)
    return CostStep(*values)


def detectable_table(table: StepTable) -> dict[str, Detectable | Missing]:
    """Per metric: the smallest difference the test set detects with 80 % power at the
    table's corrected level, from the median paired spread and size of the tested steps."""
    out: dict[str, Detectable | Missing] = {}
    for metric, spec in METRIC_SPECS.items():
        tested = [step.metrics[metric] for step in table.steps
                  if math.isfinite(step.metrics[metric].detectable)]
        if not tested:
            out[metric] = Missing("no step was tested on this metric")
            continue
        # a finite detectable size was computed from a comparison: every tested cell has one
        compared = [cell.utterances for cell in tested
                    if isinstance(cell.utterances, stats.Comparison)]
        pairs = int(np.median([c.n for c in compared]))
        sd = float(np.median([c.sd for c in compared]))
        sizes = [cell.detectable for cell in tested]
        resolution = spec.resolution
        needed = stats.pairs_needed(sd, resolution, table.tests) \
            if math.isfinite(resolution) else 0
        out[metric] = Detectable(pairs, sd, stats.detectable_difference(sd, pairs, table.tests),
                                 stats.detectable_difference(sd, pairs, 1), min(sizes),
                                 max(sizes), resolution, needed)
    return out
