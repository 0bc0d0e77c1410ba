"""Read the results tree (docs/results.md) into a :class:`Results`.

Nothing here fails on an absent or unreadable piece: it becomes a :class:`Missing` that
says why, so one failed run never stops the report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import layout
from ..data.manifest import read_manifest
from ..errors import DataError
from ..metrics.registry import METRIC_SPECS

NOISY = "noisy"
#: the columns of an eval/metrics.tsv, as `mbsnet evaluate` writes them
METRIC_COLUMNS = ["utt_id", "system", "snr", "noise", *METRIC_SPECS, "error"]


@dataclass(frozen=True)
class Missing:
    """A piece of the results that is absent, with the reason shown in its place."""

    reason: str          # short, shown in table cells
    detail: str = ""     # the evidence: files looked for, the workflow log's last line

    def __str__(self) -> str:
        return f"missing: {self.reason}"

    @property
    def full(self) -> str:
        return f"{self.reason} ({self.detail})" if self.detail else self.reason


@dataclass
class Run:
    """One evaluated system: an ablation at one seed, or the noisy input."""

    system: str
    seed: int | None
    path: Path
    metrics: pd.DataFrame | Missing
    train_summary: dict | Missing | None = None
    train_log: list[dict] = field(default_factory=list)


@dataclass
class System:
    """An ablation (all its seeds) or the noisy input (``profile`` None: not applicable)."""

    name: str
    runs: list[Run]
    profile: dict | Missing | None = None
    claimed_params: int | None = None

    @property
    def scored_runs(self) -> list[Run]:
        return [r for r in self.runs if isinstance(r.metrics, pd.DataFrame)]

    @property
    def is_noisy(self) -> bool:
        return self.name == NOISY


@dataclass
class Results:
    root: Path
    config: dict
    manifest: pd.DataFrame | Missing
    systems: dict[str, System]   # the noisy input first, then ablations in config order

    @property
    def ablations(self) -> list[System]:
        return [s for s in self.systems.values() if not s.is_noisy]

    @property
    def baseline(self) -> str:
        return self.config.get("report", {}).get("baseline", "bsrnn")

    def rel(self, path: Path) -> str:
        """A path as shown in the report: relative to the results directory."""
        try:
            return str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path)


# --------------------------------------------------------------------------- files


def read_json(path: Path, shown: str) -> dict | Missing:
    if not path.is_file():
        return Missing(f"no {shown}")
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Missing(f"unreadable {shown}", str(exc))
    return value if isinstance(value, dict) else Missing(f"{shown} is not a JSON object")


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a log, skipping a torn last line (a run killed mid-write)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            records.append(value)
    return records


def read_tsv(path: Path, columns: list[str], shown: str) -> pd.DataFrame | Missing:
    if not path.is_file():
        return Missing(f"no {shown}")
    try:
        frame = pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["", "nan", "NaN"],
                            dtype={"utt_id": str, "noise": str, "error": str})
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        return Missing(f"unreadable {shown}", str(exc))
    lacking = [c for c in columns if c not in frame.columns]
    if lacking:
        return Missing(f"{shown} lacks columns {', '.join(lacking)}")
    return frame


def _read_metrics(path: Path, shown: str) -> pd.DataFrame | Missing:
    frame = read_tsv(path, METRIC_COLUMNS, shown)
    if isinstance(frame, Missing):
        return frame
    for col in ["snr", *METRIC_SPECS]:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame["error"] = frame["error"].fillna("")
    frame["noise"] = frame["noise"].fillna("unknown")
    return frame


def number(value: Any, why: str) -> float | Missing:
    """``value`` as a finite float, else ``Missing(why)`` (booleans are not numbers)."""
    if isinstance(value, bool):
        return Missing(why)
    try:
        out = float(value)
    except (TypeError, ValueError):
        return Missing(why)
    return out if math.isfinite(out) else Missing(why)


def record_number(record: dict | Missing | None, shown: str, *keys: str) -> float | Missing:
    """A finite number at ``record[k1][k2]...``, or why there is none."""
    if isinstance(record, Missing):
        return record
    value: Any = record
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return number(value, f"no {'.'.join(keys)} in {shown}")


# --------------------------------------------------------------------------- the tree


def log_hint(root: Path, rule: str, **wildcards: object) -> str:
    """'see logs/...: "last line"' when the workflow left the log of ``rule``'s job with
    ``wildcards`` (:func:`mbsnet.layout.log`), else ''."""
    log = layout.log(rule, **wildcards)
    path = root / log
    if not path.is_file():
        return ""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    last = f': "{lines[-1][:200]}"' if lines else ""
    return f"see {log}{last}"


def absent(reason: str, *details: str) -> Missing:
    """A :class:`Missing` whose detail joins the non-empty ``details``."""
    return Missing(reason, "; ".join(d for d in details if d))


def _read_run(root: Path, ablation: str, seed: int) -> Run:
    job = {"ablation": ablation, "seed": seed}
    run_dir = layout.run_dir(root, ablation, seed)
    shown = {name: layout.fill(pattern, **job) for name, pattern in (
        ("run", layout.RUN), ("log", layout.TRAIN_LOG), ("summary", layout.TRAIN_SUMMARY),
        ("metrics", layout.EVAL_METRICS))}
    log = read_jsonl(root / shown["log"])
    summary_file, metrics_file = root / shown["summary"], root / shown["metrics"]
    if not run_dir.is_dir():
        summary: dict | Missing = absent("not run", f"no {shown['run']}/")
    elif not summary_file.is_file():
        hint = log_hint(root, "train", **job)
        epochs = sum(r.get("kind") == "epoch" for r in log)
        summary = absent("training did not finish", f"{epochs} epoch(s) logged, no "
                         f"{shown['summary']}", hint) if log else \
            absent("not trained", f"no {shown['summary']}", hint)
    else:
        summary = read_json(summary_file, shown["summary"])
    if metrics_file.is_file():
        metrics = _read_metrics(metrics_file, shown["metrics"])
    elif isinstance(summary, Missing):
        metrics = summary
    else:
        metrics = absent("not evaluated", f"no {shown['metrics']}",
                         log_hint(root, "evaluate", **job))
    return Run(ablation, seed, run_dir, metrics, summary, log)


def _read_manifest(root: Path) -> pd.DataFrame | Missing:
    path = root / layout.MANIFEST
    try:
        return read_manifest(path)
    except DataError as exc:
        return Missing(f"no {layout.MANIFEST}" if not path.is_file()
                       else f"unreadable {layout.MANIFEST}", str(exc))


def load_results(root: str | Path, config: Mapping[str, Any]) -> Results:
    """Everything the report needs from ``root``, for the ablations and seeds of ``config``."""
    root = Path(root)
    manifest = _read_manifest(root)
    noisy_dir = root / layout.NOISY_EVAL
    if (root / layout.NOISY_METRICS).is_file():
        noisy = _read_metrics(root / layout.NOISY_METRICS, layout.NOISY_METRICS)
    else:
        noisy = absent("not evaluated", f"no {layout.NOISY_METRICS}",
                       log_hint(root, "evaluate_noisy"))
    systems = {NOISY: System(NOISY, [Run(NOISY, None, noisy_dir, noisy)])}
    for name, entry in config["ablations"].items():
        runs = [_read_run(root, name, seed) for seed in config.get("seeds", [0])]
        shown = layout.fill(layout.PROFILE, ablation=name)
        if (root / shown).is_file():
            profile = read_json(root / shown, shown)
        else:
            profile = absent("not profiled", f"no {shown}",
                             log_hint(root, "profile", ablation=name))
        systems[name] = System(name, runs, profile, entry.get("claimed_params"))
    return Results(root, dict(config), manifest, systems)


# --------------------------------------------------------------------------- scores


def run_scores(run: Run) -> pd.DataFrame:
    """A scored run's metrics indexed by utterance id."""
    if isinstance(run.metrics, Missing):
        raise ValueError(f"{run.system} seed {run.seed} is not scored: {run.metrics.full}")
    return run.metrics.drop_duplicates("utt_id", keep="last").set_index("utt_id")


def system_scores(system: System) -> pd.DataFrame | Missing:
    """Per-utterance metrics of a system, averaged over its scored seeds (NaN left out),
    with the utterance's ``noise`` and ``snr``."""
    runs = system.scored_runs
    if not runs:
        return why_unscored(system)
    frames = [run_scores(r) for r in runs]
    scores = pd.concat([f[list(METRIC_SPECS)] for f in frames]).groupby(level=0, sort=False).mean()
    info = pd.concat([f[["noise", "snr"]] for f in frames])
    info = info[~info.index.duplicated(keep="first")]
    return info.join(scores, how="right")


def why_unscored(system: System) -> Missing:
    """Why no run of ``system`` has metrics: one reason for all seeds, or each seed's."""
    missing = [r.metrics for r in system.runs if isinstance(r.metrics, Missing)]
    if len({m.reason for m in missing}) == 1:
        several = len(system.runs) > 1
        return Missing(missing[0].reason,
                       "; ".join(f"seed {r.seed}: {r.metrics.detail}" if several
                                 else r.metrics.detail for r in system.runs if r.metrics.detail))
    return Missing("; ".join(f"seed {r.seed}: {r.metrics.reason}" for r in system.runs),
                   "; ".join(f"seed {r.seed}: {r.metrics.full}" for r in system.runs))
