"""Read the results tree (docs/results.md) and turn it into the report's tables.

Nothing here fails on an absent or unreadable piece: it becomes a :class:`Missing` that
says why, so one failed run never stops the report.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import stats
from ..data.manifest import example_utterance, read_manifest
from ..errors import DataError
from ..metrics import METRICS as METRIC_KEYS
from ..wavio import SAMPLE_RATE, read_audio

NOISY = "noisy"
_LABELS = {"pesq_wb": "PESQ-WB", "csig": "CSIG", "cbak": "CBAK", "covl": "COVL",
           "ssnr": "SSNR", "stoi": "STOI", "estoi": "ESTOI", "si_sdr": "SI-SDR"}
#: metric column (as `mbsnet evaluate` writes it) -> label; every metric is better when higher.
METRICS = {key: _LABELS.get(key, key) for key in METRIC_KEYS}
#: metrics of the significance tests
TESTED_METRICS = ("pesq_wb", "si_sdr")
METRIC_COLUMNS = ["utt_id", "system", "snr", "noise", *METRICS, "error"]
#: cost column -> label; lower is better for all but the claimed count and the ratio.
COSTS = {"params": "Params", "claimed_params": "Claimed", "params_ratio": "Measured / claimed",
         "macs_per_second": "MACs / s audio", "peak_train_memory_mb": "Peak train mem (MB)",
         "train_step_seconds": "Train step (s)", "inference_rtf": "RTF",
         "train_wall_seconds": "Train wall time (min:s)"}
LOWER_IS_BETTER = ("params", "macs_per_second", "peak_train_memory_mb", "train_step_seconds",
                   "inference_rtf", "train_wall_seconds")
#: |measured / claimed - 1| above this flags a parameter count mismatch.
PARAMS_TOLERANCE = 0.10


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


# --------------------------------------------------------------------------- reading


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
    for col in ["snr", *METRICS]:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame["error"] = frame["error"].fillna("")
    frame["noise"] = frame["noise"].fillna("unknown")
    return frame


def _log_hint(root: Path, log: str) -> str:
    """'see logs/...: "last line"' when the workflow left log ``logs/<log>``, else ''.
    (The rules log to logs/{rule}/{ablation}_seed{seed}.log, logs/profile/{ablation}.log
    and logs/evaluate/noisy.log.)"""
    path = root / "logs" / log
    if not path.is_file():
        return ""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    last = f': "{lines[-1][:200]}"' if lines else ""
    return f"see logs/{log}{last}"


def _absent(reason: str, *details: str) -> Missing:
    return Missing(reason, "; ".join(d for d in details if d))


def _read_run(root: Path, ablation: str, seed: int) -> Run:
    run_dir = root / ablation / f"seed{seed}"
    shown = f"{ablation}/seed{seed}"
    log = read_jsonl(run_dir / "train_log.jsonl")
    if not run_dir.is_dir():
        summary: dict | Missing = _absent("not run", f"no {shown}/")
    elif not (run_dir / "train_summary.json").is_file():
        hint = _log_hint(root, f"train/{ablation}_seed{seed}.log")
        epochs = sum(r.get("kind") == "epoch" for r in log)
        summary = _absent("training did not finish", f"{epochs} epoch(s) logged, no "
                          f"{shown}/train_summary.json", hint) if log else \
            _absent("not trained", f"no {shown}/train_summary.json", hint)
    else:
        summary = read_json(run_dir / "train_summary.json", f"{shown}/train_summary.json")
    metrics_file = run_dir / "eval" / "metrics.tsv"
    if metrics_file.is_file():
        metrics = _read_metrics(metrics_file, f"{shown}/eval/metrics.tsv")
    elif isinstance(summary, Missing):
        metrics = summary
    else:
        metrics = _absent("not evaluated", f"no {shown}/eval/metrics.tsv",
                          _log_hint(root, f"evaluate/{ablation}_seed{seed}.log"))
    return Run(ablation, seed, run_dir, metrics, summary, log)


def load_results(root: str | Path, config: Mapping[str, Any]) -> Results:
    """Everything the report needs from ``root``, for the ablations and seeds of ``config``."""
    root = Path(root)
    try:
        manifest: pd.DataFrame | Missing = read_manifest(root / "data" / "manifest.tsv")
    except DataError as exc:
        manifest = Missing("no data/manifest.tsv" if not (root / "data" / "manifest.tsv").is_file()
                           else "unreadable data/manifest.tsv", str(exc))
    noisy_dir = root / NOISY / "eval"
    if (noisy_dir / "metrics.tsv").is_file():
        noisy = _read_metrics(noisy_dir / "metrics.tsv", "noisy/eval/metrics.tsv")
    else:
        noisy = _absent("not evaluated", "no noisy/eval/metrics.tsv",
                        _log_hint(root, "evaluate/noisy.log"))
    systems = {NOISY: System(NOISY, [Run(NOISY, None, noisy_dir, noisy)])}
    for name, entry in config["ablations"].items():
        runs = [_read_run(root, name, seed) for seed in config.get("seeds", [0])]
        if (root / name / "profile.json").is_file():
            profile = read_json(root / name / "profile.json", f"{name}/profile.json")
        else:
            profile = _absent("not profiled", f"no {name}/profile.json",
                              _log_hint(root, f"profile/{name}.log"))
        systems[name] = System(name, runs, profile, entry.get("claimed_params"))
    return Results(root, dict(config), manifest, systems)


# --------------------------------------------------------------------------- tables


def run_scores(run: Run) -> pd.DataFrame:
    """A scored run's metrics indexed by utterance id."""
    return run.metrics.drop_duplicates("utt_id", keep="last").set_index("utt_id")


def system_scores(system: System) -> pd.DataFrame | Missing:
    """Per-utterance metrics of a system, averaged over its scored seeds (NaN left out),
    with the utterance's ``noise`` and ``snr``."""
    runs = system.scored_runs
    if not runs:
        return _why_unscored(system)
    frames = [run_scores(r) for r in runs]
    scores = pd.concat([f[list(METRICS)] for f in frames]).groupby(level=0, sort=False).mean()
    info = pd.concat([f[["noise", "snr"]] for f in frames])
    info = info[~info.index.duplicated(keep="first")]
    return info.join(scores, how="right")


def _why_unscored(system: System) -> Missing:
    missing = [r.metrics for r in system.runs if isinstance(r.metrics, Missing)]
    if len({m.reason for m in missing}) == 1:
        several = len(system.runs) > 1
        return Missing(missing[0].reason,
                       "; ".join(f"seed {r.seed}: {r.metrics.detail}" if several
                                 else r.metrics.detail for r in system.runs if r.metrics.detail))
    return Missing("; ".join(f"seed {r.seed}: {r.metrics.reason}" for r in system.runs),
                   "; ".join(f"seed {r.seed}: {r.metrics.full}" for r in system.runs))


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
    for col in METRICS:
        _mark_best(rows, col, [r.metrics[col].mean if isinstance(r.metrics[col], stats.Estimate)
                               else math.nan for r in rows], higher=True)
    for col in LOWER_IS_BETTER:
        _mark_best(rows, col, [r.costs[col] if isinstance(r.costs[col], float) else math.nan
                               for r in rows], higher=False)
    return rows


def _mark_best(rows: list[HeadlineRow], col: str, values: list[float], higher: bool) -> None:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2 or min(finite) == max(finite):
        return   # nothing to choose between
    best = max(finite) if higher else min(finite)
    for row, value in zip(rows, values):
        if value == best:
            row.best.add(col)


def _headline_row(system: System) -> HeadlineRow:
    runs = system.scored_runs
    if runs:
        frames = [run_scores(r) for r in runs]
        metrics = {m: _estimate([f[m] for f in frames]) for m in METRICS}
        n = len(set().union(*(f.index for f in frames)))
    else:
        why = _why_unscored(system)
        metrics, n = {m: why for m in METRICS}, 0
    return HeadlineRow(system.name, len(runs), n, metrics, _costs(system))


def _estimate(per_seed: list[pd.Series]) -> stats.Estimate | Missing:
    est = stats.seed_estimate(per_seed)
    return est if est.n else Missing("failed on every utterance (see Health)")


def _costs(system: System) -> dict[str, float | Missing | None]:
    if system.is_noisy:
        return {c: None for c in COSTS}
    profile = system.profile
    costs: dict[str, float | Missing | None] = {}
    for key in ("macs_per_second", "peak_train_memory_mb", "train_step_seconds", "inference_rtf"):
        costs[key] = _field(profile, "profile.json", key)
    costs["params"] = _field(profile, "profile.json", "params", "total")
    summaries = [r.train_summary for r in system.runs if isinstance(r.train_summary, dict)]
    if isinstance(costs["params"], Missing) and summaries:   # train_summary.json records it too
        from_training = _field(summaries[0], "train_summary.json", "params")
        costs["params"] = from_training if isinstance(from_training, float) else costs["params"]
    # No claim in the config is not a missing result: the cells stay empty ("—").
    claimed = None if system.claimed_params is None else float(system.claimed_params)
    costs["claimed_params"] = claimed
    if isinstance(costs["params"], Missing):
        costs["params_ratio"] = costs["params"]
    else:
        costs["params_ratio"] = None if claimed is None else costs["params"] / claimed
    walls = [w for w in (_field(s, "train_summary.json", "wall_seconds") for s in summaries)
             if isinstance(w, float)]
    if walls:
        costs["train_wall_seconds"] = float(np.mean(walls))
    else:
        costs["train_wall_seconds"] = next(
            (r.train_summary for r in system.runs if isinstance(r.train_summary, Missing)),
            Missing("no wall_seconds in train_summary.json"))
    return costs


def _field(record: dict | Missing | None, shown: str, *keys: str) -> float | Missing:
    """A finite number at ``record[k1][k2]...``, or why there is none."""
    if isinstance(record, Missing):
        return record
    value: Any = record
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return _number(value, f"no {'.'.join(keys)} in {shown}")


def _number(value: Any, why: str) -> float | Missing:
    if isinstance(value, bool):
        return Missing(why)
    try:
        out = float(value)
    except (TypeError, ValueError):
        return Missing(why)
    return out if math.isfinite(out) else Missing(why)


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
    rows = []
    for system in results.ablations:
        if system.name == base.name:
            continue
        scores = system_scores(system)
        for metric in TESTED_METRICS:
            result = scores if isinstance(scores, Missing) else \
                stats.paired_comparison(scores[metric], base_scores[metric])
            rows.append(SignificanceRow(system.name, metric, result))
    p = [r.result.p if isinstance(r.result, stats.Comparison) else math.nan for r in rows]
    tests = sum(math.isfinite(x) for x in p)
    for row, adjusted in zip(rows, stats.holm(p)):
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


@dataclass
class Example:
    """One test utterance as heard by every system (``signals``: label -> wave or why not)."""

    utt_id: str | Missing
    signals: dict[str, np.ndarray | Missing]
    sample_rate: int


def example_audio(results: Results) -> Example:
    """The clean, noisy and enhanced versions of the report's example utterance
    (:func:`example_utterance`, the choice `mbsnet evaluate` makes too): each ablation's from
    the first scored seed with ``eval/example/{utt_id}.wav``, which every evaluation writes,
    else with ``eval/wavs/{utt_id}.wav`` (evaluation.save_wavs; trees evaluated before
    eval/example/ existed)."""
    manifest = results.manifest
    if isinstance(manifest, Missing):
        return Example(manifest, {}, SAMPLE_RATE)
    wanted = results.config.get("report", {}).get("example_utterance")
    try:
        utt = example_utterance(manifest, wanted, where="data/manifest.tsv")
    except DataError as exc:
        return Example(Missing(str(exc)), {}, SAMPLE_RATE)
    row = manifest[manifest["utt_id"] == utt].iloc[0]
    signals = {kind: _read_wav(Path(row[kind]), results.rel(Path(row[kind])), SAMPLE_RATE)
               for kind in ("clean", "noisy")}
    for system in results.ablations:
        signals[system.name] = _enhanced_example(results, system, utt)
    return Example(utt, signals, SAMPLE_RATE)


def _enhanced_example(results: Results, system: System, utt: str) -> np.ndarray | Missing:
    runs = system.scored_runs
    if not runs:
        return Missing(f"{system.name} was not scored")
    for folder in ("example", "wavs"):
        for run in runs:
            path = run.path / "eval" / folder / f"{utt}.wav"
            if path.is_file():
                return _read_wav(path, results.rel(path), SAMPLE_RATE)
    run = runs[0]
    return _absent(f"no {system.name}/seed{run.seed}/eval/example/{utt}.wav",
                   f"mbsnet evaluate writes it (--example {utt}); rerun the evaluation",
                   _log_hint(results.root, f"evaluate/{system.name}_seed{run.seed}.log"))


def _read_wav(path: Path, shown: str, rate: int) -> np.ndarray | Missing:
    if not path.is_file():
        return Missing(f"no {shown}")
    try:
        wave, sr = read_audio(path, dtype="float32", always_2d=True)
    except DataError as exc:
        return Missing(f"{shown} is unreadable ({exc.__cause__})")
    if sr != rate:
        return Missing(f"{shown} is {sr} Hz, expected {rate}")
    return wave.mean(axis=1)


# --------------------------------------------------------------------------- devices


NOT_RECORDED = "not recorded"
NO_SCAN = "none (no Mamba block)"


@dataclass
class Placement:
    """Where an ablation's profile and trainings ran and which selective scan they ran
    (as profile.json and train_summary.json record them), and how the two disagree."""

    system: str
    profile_device: str
    profile_scan: str
    train_device: str
    train_scan: str
    notes: list[str]
    train_batch: str = NOT_RECORDED
    train_throughput: str = NOT_RECORDED


def _device_and_scan(record: dict) -> tuple[str, str]:
    device = str(record["device"]) if record.get("device") else NOT_RECORDED
    scan = NOT_RECORDED if "scan" not in record else NO_SCAN if record["scan"] is None \
        else str(record["scan"])
    return device, scan


def _training_layout(summary: dict) -> tuple[str, str, str]:
    """A train_summary's devices (each process's, for several), its batch (global, and how
    processes and micro-batches divide it) and its throughput in utterances/s."""
    device, _ = _device_and_scan(summary)
    processes = summary.get("processes", 1)
    if processes > 1 and summary.get("process_devices"):
        device = f"{processes} processes: {', '.join(map(str, summary['process_devices']))}"
    if "batch_size" not in summary:
        return device, NOT_RECORDED, NOT_RECORDED
    batch = str(summary["batch_size"])
    accumulate = summary.get("accumulate", 1)
    if processes > 1 or accumulate > 1:
        batch += (f" = {processes} x {accumulate} x {summary.get('micro_batch')} "
                  "(processes x micro-batches x items)")
    rate = summary.get("utterances_per_second")
    return device, batch, NOT_RECORDED if rate is None else f"{rate:.2f}"


def device_kind(device: str) -> str:
    """What a device string names regardless of its index: ``cpu`` or the GPU's model
    (``cuda:1 = GPU 5 (NVIDIA A100)`` -> ``NVIDIA A100``)."""
    if "(" in device and device.endswith(")"):
        return device[device.index("(") + 1:-1]
    return device.split(":")[0]


def _by_seed(values: dict[int, str]) -> str:
    """One value, or each distinct value with its seeds."""
    distinct = list(dict.fromkeys(values.values()))
    if len(distinct) == 1:
        return distinct[0]
    return "; ".join(f"{v} (seed {', '.join(str(s) for s, w in values.items() if w == v)})"
                     for v in distinct)


def placements(results: Results) -> list[Placement]:
    """One :class:`Placement` per ablation; what is absent says why."""
    rows = []
    for system in results.ablations:
        profile = system.profile
        profile_device, profile_scan = _device_and_scan(profile) \
            if isinstance(profile, dict) else (str(profile), str(profile))
        trained = {run.seed: _device_and_scan(run.train_summary) for run in system.runs
                   if isinstance(run.train_summary, dict)}
        layouts = {run.seed: _training_layout(run.train_summary) for run in system.runs
                   if isinstance(run.train_summary, dict)}
        if trained:
            train_device = _by_seed({s: d for s, (d, _, _) in layouts.items()})
            train_scan = _by_seed({s: sc for s, (_, sc) in trained.items()})
            train_batch = _by_seed({s: b for s, (_, b, _) in layouts.items()})
            throughput = _by_seed({s: r for s, (_, _, r) in layouts.items()})
        else:
            train_device = train_scan = train_batch = throughput = "not trained"
        notes = []
        if isinstance(profile, dict):
            kinds = {device_kind(d) for d, _ in trained.values() if d != NOT_RECORDED}
            other = sorted(kinds - {device_kind(profile_device)})
            if profile_device != NOT_RECORDED and other:
                notes.append(f"profiled on {device_kind(profile_device)} but trained on "
                             f"{', '.join(other)}: the memory budget was checked on another "
                             "device")
            scans = sorted({sc for _, sc in trained.values() if sc != NOT_RECORDED}
                           - {profile_scan})
            if profile_scan != NOT_RECORDED and scans:
                notes.append(f"profiled with the {profile_scan} scan but trained with "
                             f"{', '.join(scans)}")
        rows.append(Placement(system.name, profile_device, profile_scan, train_device,
                              train_scan, notes, train_batch, throughput))
    return rows


# --------------------------------------------------------------------------- health


@dataclass
class Health:
    missing: list[tuple[str, str]]              # (what, why)
    skipped: list[dict]                         # system, seed, skipped, disc_skipped, reasons
    failed_metrics: list[dict]                  # system, seed, utt_id, metrics, error
    resumed: list[dict]                         # system, seed, times, detail
    memory: list[dict]                          # system, text
    coverage: list[str]                         # runs scoring fewer utterances than the test set


def health(results: Results) -> Health:
    out = Health([], [], [], [], [], [])
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
            _run_health(out, run, label, test_ids)
    return out


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


def _run_health(out: Health, run: Run, label: str, test_ids: set[str] | None) -> None:
    if isinstance(run.metrics, Missing):
        out.missing.append((label, run.metrics.full))
    else:
        frame = run.metrics
        failed = frame[(frame["error"].str.len() > 0) | frame[list(METRICS)].isna().any(axis=1)]
        for _, row in failed.iterrows():
            bad = [METRICS[m] for m in METRICS if not np.isfinite(row[m])]
            out.failed_metrics.append({"system": run.system, "seed": run.seed,
                                       "utt_id": row["utt_id"], "metrics": ", ".join(bad),
                                       "error": row["error"] or "(no reason recorded)"})
        if test_ids is not None:
            absent = test_ids - set(run.metrics["utt_id"])
            if absent:
                out.coverage.append(f"{label}: {len(absent)} of {len(test_ids)} test utterances "
                                    f"have no row in metrics.tsv (e.g. {sorted(absent)[0]})")
    summary = run.train_summary if isinstance(run.train_summary, dict) else {}

    def count(key: str, default: int) -> int:
        value = _number(summary.get(key), "")
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
