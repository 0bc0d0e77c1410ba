"""Statistics shared by evaluation and the report: t confidence intervals, seed
aggregation, the paired Wilcoxon signed-rank test, Holm's correction, and the smallest
difference a paired test set can detect."""

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
#: the power at which the report states the smallest detectable difference
POWER = 0.80
#: Pitman asymptotic relative efficiency of the Wilcoxon signed-rank test to the t-test on
#: normal data: for the same power it needs 1 / ARE = pi / 3 times as many pairs.
WILCOXON_ARE = 3 / math.pi


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
    """A paired comparison of a system with a reference (the baseline, or its parent in the
    lineage) on one metric.

    ``mean_diff`` is system minus reference and ``sd`` the standard deviation of the paired
    differences; ``p`` is the raw two-sided Wilcoxon p-value, NaN with a ``note`` when no
    test was made."""

    n: int
    mean_diff: float
    ci95: float
    p: float
    note: str = ""
    sd: float = math.nan

    def detectable(self, tests: int = 1) -> float:
        """The smallest difference this comparison's test detects with 80 % power among
        ``tests`` Holm-corrected tests (NaN when no test was made)."""
        if not math.isfinite(self.p):
            return math.nan
        return detectable_difference(self.sd, self.n, tests)


def paired_comparison(system: pd.Series, baseline: pd.Series, min_pairs: int = MIN_PAIRS,
                      unit: str = "utterances") -> Comparison:
    """Wilcoxon signed-rank test over the index entries (``unit``: utterances, or seeds)
    scored (finite) in both series."""
    both = pd.concat([system.rename("a"), baseline.rename("b")], axis=1, join="inner")
    both = both[np.isfinite(both["a"]) & np.isfinite(both["b"])]
    diff = (both["a"] - both["b"]).to_numpy(dtype=float)
    n = int(diff.size)
    est = mean_ci(diff)
    sd = float(diff.std(ddof=1)) if n > 1 else math.nan

    def untested(note: str) -> Comparison:
        return Comparison(n, est.mean, est.ci95, math.nan, note, sd)

    if n < min_pairs:
        return untested(f"too few paired {unit} for a conclusion ({n} < {min_pairs})")
    if not np.any(diff != 0):
        return untested("not testable: every paired difference is zero")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(stats.wilcoxon(diff, alternative="two-sided").pvalue)
    except ValueError as exc:
        return untested(f"not testable: {exc}")
    if not math.isfinite(p):
        return untested("not testable: scipy returned no p-value")
    return Comparison(n, est.mean, est.ci95, p, sd=sd)


def detectable_difference(sd: float, n: int, tests: int = 1, alpha: float = ALPHA,
                          power: float = POWER) -> float:
    """The smallest true mean paired difference that a two-sided Wilcoxon signed-rank test
    on ``n`` pairs whose differences have standard deviation ``sd`` detects with
    probability ``power``, at level ``alpha / tests``.

    ``alpha / tests`` is Bonferroni's level, which Holm's correction applies to its
    smallest p-value, so this bounds what any of the ``tests`` can detect. The size is the
    paired t-test's, (t[1 - alpha / (2 tests), n - 1] + t[power, n - 1]) * sd / sqrt(n),
    with n replaced by the pairs the Wilcoxon test is worth, n * 3 / pi (its asymptotic
    relative efficiency on normal data): the t-test's size times sqrt(pi / 3) = 1.023.
    NaN below two pairs or without a finite ``sd``.
    """
    if n < 2 or tests < 1 or not math.isfinite(sd):
        return math.nan
    quantiles = stats.t.ppf(1 - alpha / tests / 2, n - 1) + stats.t.ppf(power, n - 1)
    return float(quantiles * sd / math.sqrt(n * WILCOXON_ARE))


def pairs_needed(sd: float, difference: float, tests: int = 1, alpha: float = ALPHA,
                 power: float = POWER) -> int:
    """The fewest pairs at which :func:`detectable_difference` is at most ``difference``."""
    if not difference > 0 or not math.isfinite(sd) or sd < 0:
        raise ValueError(f"pairs_needed: needs a positive difference and a finite sd "
                         f"(got difference {difference}, sd {sd})")
    low, high = 1, 2   # detectable(low) > difference >= detectable(high)
    while detectable_difference(sd, high, tests, alpha, power) > difference:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if detectable_difference(sd, middle, tests, alpha, power) > difference:
            low = middle
        else:
            high = middle
    return high
