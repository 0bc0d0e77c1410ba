"""Statistics shared by evaluation and the report: t confidence intervals, seed
aggregation, the paired Wilcoxon signed-rank test and Holm's correction."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

#: Fewer paired utterances than this and the report draws no conclusion from a test.
MIN_PAIRS = 10
ALPHA = 0.05


@dataclass(frozen=True)
class Estimate:
    """A mean with the half-width of its 95 % t-interval over ``n`` values.

    With several seeds, ``seeds`` > 1 and ``seed_sd`` is the standard deviation of the
    per-seed means."""

    mean: float
    ci95: float
    n: int
    seeds: int = 1
    seed_sd: float = math.nan


def t_half_width(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> float:
    """Half-width of the t confidence interval of the mean (NaN below two values)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return math.nan
    quantile = stats.t.ppf(0.5 + confidence / 2, df=x.size - 1)
    return float(quantile * x.std(ddof=1) / math.sqrt(x.size))


def mean_ci(values: Sequence[float] | np.ndarray) -> Estimate:
    """Mean ± 95 % CI of the finite values (NaN marks a failed metric and is left out)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    mean = float(x.mean()) if x.size else math.nan
    return Estimate(mean=mean, ci95=t_half_width(x), n=int(x.size))


def seed_estimate(per_seed: Sequence[pd.Series]) -> Estimate:
    """Combine one metric over seeds; each series is indexed by utterance id.

    One seed: mean ± CI over utterances. Several: the mean of the seed means, the CI over
    utterances of the per-utterance scores averaged across seeds, and the spread (SD) of the
    seed means.
    """
    if not per_seed:
        raise ValueError("seed_estimate needs at least one seed")
    if len(per_seed) == 1:
        return mean_ci(per_seed[0].to_numpy())
    seed_means = np.array([s.mean(skipna=True) for s in per_seed], dtype=float)
    seed_means = seed_means[np.isfinite(seed_means)]
    averaged = pd.concat(list(per_seed), axis=1).mean(axis=1, skipna=True)
    pooled = mean_ci(averaged.to_numpy())
    return Estimate(
        mean=float(seed_means.mean()) if seed_means.size else math.nan,
        ci95=pooled.ci95, n=pooled.n, seeds=int(seed_means.size),
        seed_sd=float(seed_means.std(ddof=1)) if seed_means.size > 1 else math.nan,
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order. NaN entries are not tests:
    they stay NaN and do not count towards the number of comparisons."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = valid.size
    running = 0.0
    for rank, idx in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adjusted[idx] = running
    return adjusted.tolist()


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of a system against the baseline on one metric.

    ``mean_diff`` is system minus baseline; ``p`` is the raw two-sided Wilcoxon p-value,
    NaN with a ``note`` when no test was made."""

    n: int
    mean_diff: float
    ci95: float
    p: float
    note: str = ""


def paired_comparison(system: pd.Series, baseline: pd.Series,
                      min_pairs: int = MIN_PAIRS) -> Comparison:
    """Wilcoxon signed-rank test over the utterances scored (finite) in both series."""
    both = pd.concat([system.rename("a"), baseline.rename("b")], axis=1, join="inner")
    both = both[np.isfinite(both["a"]) & np.isfinite(both["b"])]
    diff = (both["a"] - both["b"]).to_numpy(dtype=float)
    n = int(diff.size)
    est = mean_ci(diff)
    if n < min_pairs:
        return Comparison(n, est.mean, est.ci95, math.nan,
                          f"too few paired utterances for a conclusion ({n} < {min_pairs})")
    if not np.any(diff != 0):
        return Comparison(n, est.mean, est.ci95, math.nan,
                          "not testable: every paired difference is zero")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(stats.wilcoxon(diff, alternative="two-sided").pvalue)
    except ValueError as exc:
        return Comparison(n, est.mean, est.ci95, math.nan, f"not testable: {exc}")
    if not math.isfinite(p):
        return Comparison(n, est.mean, est.ci95, math.nan,
                          "not testable: scipy returned no p-value")
    return Comparison(n, est.mean, est.ci95, p)
