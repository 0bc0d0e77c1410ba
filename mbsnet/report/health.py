"""The report's health checks: missing pieces, skipped training steps, utterances whose
metrics failed, resumed runs, pre-flight memory warnings, incomplete test coverage and
ablations that do not improve on the noisy input."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..metrics.registry import METRIC_SPECS
from .formatting import unit_suffix
from .loading import NOISY, Missing, Results, Run, number


@dataclass
class Health:
    missing: list[tuple[str, str]]              # (what, why)
    skipped: list[dict]                         # system, seed, skipped, disc_skipped, reasons
    failed_metrics: list[dict]                  # system, seed, utt_id, metrics, error
    resumed: list[dict]                         # system, seed, times, detail
    memory: list[dict]                          # system, text
    coverage: list[str]                         # runs scoring fewer utterances than the test set
    not_better: list[dict]                      # system, seed, metrics: means not above noisy


def health(results: Results) -> Health:
    out = Health([], [], [], [], [], [], [])
    test_ids = None
    if isinstance(results.manifest, pd.DataFrame):
        test_ids = set(results.manifest.loc[results.manifest["split"] == "test", "utt_id"])
    else:
        out.missing.append(("data/manifest.tsv", results.manifest.full))
    for system in results.systems.values():
        if isinstance(system.profile, Missing):
            out.missing.append((f"{system.name} profile", system.profile.full))
        elif isinstance(system.profile, dict):
            out.memory.extend({"system": system.name, "text": text}
                              for text in _profile_warnings(system.profile))
        for run in system.runs:
            label = system.name if run.seed is None else f"{system.name} seed {run.seed}"
            if isinstance(run.metrics, Missing):
                out.missing.append((label, run.metrics.full))
            else:
                _metric_health(out, run, run.metrics, label, test_ids)
            _training_health(out, run)
    _compare_with_noisy(out, results)
    return out


def _compare_with_noisy(out: Health, results: Results) -> None:
    """Each run's metrics whose mean is not better than the noisy input's."""
    noisy = results.systems.get(NOISY)
    if noisy is None or not isinstance(noisy.runs[0].metrics, pd.DataFrame):
        return
    reference = noisy.runs[0].metrics
    for system in results.ablations:
        for run in system.scored_runs:
            worse = _not_better(run.metrics, reference)
            if worse:
                out.not_better.append({"system": run.system, "seed": run.seed,
                                       "metrics": "; ".join(worse)})


def _not_better(metrics: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    """``SI-SDR 6.19 dB (noisy 7.56 dB)`` for each metric whose mean does not improve on the
    reference's."""
    texts = []
    for spec in METRIC_SPECS.values():
        mean, base = metrics[spec.name].mean(), reference[spec.name].mean()
        if np.isfinite(mean) and np.isfinite(base) and not spec.better(mean - base):
            d, unit = spec.decimals, unit_suffix(spec.name)
            texts.append(f"{spec.label} {mean:.{d}f}{unit} (noisy {base:.{d}f}{unit})")
    return texts


def _profile_warnings(profile: dict) -> list[str]:
    """What the pre-flight profile warned about: over the budget, near it, skipped steps."""
    texts = []
    if profile.get("within_budget") is False:
        peak = profile.get("peak_train_memory_mb")
        peak_text = f"{peak:,.0f} MB" if isinstance(peak, (int, float)) else "unknown"
        texts.append(f"peak training memory {peak_text} at batch {profile.get('batch_size')} "
                     f"exceeds the {profile.get('budget_gb')} GB budget ({profile.get('device')})")
    warnings = profile.get("warnings")
    if isinstance(warnings, list):
        texts.extend(str(w) for w in warnings)
    return texts


def _metric_health(out: Health, run: Run, frame: pd.DataFrame, label: str,
                   test_ids: set[str] | None) -> None:
    """The utterances of a scored run whose metrics failed, and the test utterances it lacks."""
    names = list(METRIC_SPECS)
    failed = frame[(frame["error"].str.len() > 0) | frame[names].isna().any(axis=1)]
    for _, row in failed.iterrows():
        bad = [spec.label for spec in METRIC_SPECS.values() if not np.isfinite(row[spec.name])]
        out.failed_metrics.append({"system": run.system, "seed": run.seed,
                                   "utt_id": row["utt_id"], "metrics": ", ".join(bad),
                                   "error": row["error"] or "(no reason recorded)"})
    if test_ids is not None:
        absent = test_ids - set(frame["utt_id"])
        if absent:
            out.coverage.append(f"{label}: {len(absent)} of {len(test_ids)} test utterances "
                                f"have no row in metrics.tsv (e.g. {sorted(absent)[0]})")


def _training_health(out: Health, run: Run) -> None:
    """A run's skipped steps and resumes, from train_summary.json and its log."""
    summary = run.train_summary if isinstance(run.train_summary, dict) else {}

    def count(key: str, default: int) -> int:
        value = number(summary.get(key), "")
        return int(value) if isinstance(value, float) else default

    steps = [r for r in run.train_log if r.get("kind") == "step" and r.get("skipped")]
    skipped = count("skipped_steps", len(steps))
    disc = count("disc_skipped_steps", 0)
    if skipped or disc:
        reasons = Counter(str(r.get("reason", "unspecified")) for r in steps)
        out.skipped.append({"system": run.system, "seed": run.seed, "skipped": skipped,
                            "disc_skipped": disc,
                            "reasons": ", ".join(f"{k} ×{v}" for k, v in reasons.most_common())})
    resumes = [r for r in run.train_log if r.get("kind") == "resume"]
    times = max(count("resumed", 0), len(resumes))
    if times:
        detail = "; ".join(f"epoch {r.get('epoch')} step {r.get('step')} from {r.get('from')}"
                           for r in resumes)
        out.resumed.append({"system": run.system, "seed": run.seed, "times": times,
                            "detail": detail})
