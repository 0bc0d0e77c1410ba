"""Assemble the report: tables and figures into the HTML template, plus summary.tsv/.md."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from .. import stats
from ..atomic import write_text
from . import collect, figures
from .collect import COSTS, METRICS, HeadlineRow, Missing
from .provenance import provenance

DECIMALS = {"stoi": 3, "estoi": 3}


# --------------------------------------------------------------------------- formatting


@dataclass
class Cell:
    text: str
    cls: str = ""
    title: str = ""
    colspan: int = 1
    sub: list[str] = field(default_factory=list)   # smaller lines under the text


def fmt_estimate(metric: str, est: stats.Estimate) -> str:
    d = DECIMALS.get(metric, 2)
    text = f"{est.mean:.{d}f}"
    if math.isfinite(est.ci95):
        text += f" ± {est.ci95:.{d}f}"
    return text


def fmt_seeds(metric: str, est: stats.Estimate) -> str:
    """The spread across seeds, '' for a single seed."""
    if est.seeds < 2:
        return ""
    return f"sd {est.seed_sd:.{DECIMALS.get(metric, 2)}f} over {est.seeds} seeds"


def fmt_count(value: float) -> str:
    for scale, suffix in [(1e9, " G"), (1e6, " M"), (1e3, " k")]:
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}"


def fmt_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes \
        else f"{seconds:.1f} s"


def fmt_cost(col: str, value: float) -> str:
    if col in ("params", "claimed_params", "macs_per_second"):
        return fmt_count(value)
    if col == "params_ratio":
        return f"×{value:.2f}"
    if col == "peak_train_memory_mb":
        return f"{value:,.0f}"
    if col == "train_wall_seconds":
        return fmt_duration(value)
    return f"{value:.3g}"


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "—"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def headline_cells(row: HeadlineRow) -> list[Cell]:
    """The HTML cells of one headline row (metrics then costs), identical adjacent
    "missing" cells merged into one."""
    cells = []
    for metric in METRICS:
        est = row.metrics[metric]
        if isinstance(est, Missing):
            cells.append(Cell(str(est), "missing", est.full))
            continue
        d = DECIMALS.get(metric, 2)
        cell = Cell(f"{est.mean:.{d}f}", "best" if metric in row.best else "",
                    f"n = {est.n} utterances")
        if math.isfinite(est.ci95):
            cell.sub.append(f"± {est.ci95:.{d}f}")
        if est.seeds > 1:
            cell.sub.append(f"sd {est.seed_sd:.{d}f}")
            cell.title += f"; {fmt_seeds(metric, est)}"
        cells.append(cell)
    for col in COSTS:
        value = row.costs[col]
        if value is None:
            cells.append(Cell("—", "na", "not applicable"))
        elif isinstance(value, Missing):
            cells.append(Cell(str(value), "missing", value.full))
        else:
            cls = "best" if col in row.best else ""
            title = ""
            if col in ("params", "params_ratio") and row.params_mismatch:
                cls, title = "mismatch", (f"measured differs from the claimed count by more "
                                          f"than {collect.PARAMS_TOLERANCE:.0%}")
            cells.append(Cell(fmt_cost(col, value), cls, title))
    merged: list[Cell] = []
    for cell in cells:
        if merged and cell.cls == "missing" and merged[-1].cls == "missing" \
                and merged[-1].title == cell.title:
            merged[-1].colspan += 1
        else:
            merged.append(cell)
    return merged


def _missing_note(row: HeadlineRow) -> list[tuple[str, str]]:
    """(columns, reason) for the missing cells of a row, columns sharing a reason grouped."""
    by_reason: dict[str, list[str]] = {}
    for col, value in {**row.metrics, **row.costs}.items():
        if isinstance(value, Missing):
            by_reason.setdefault(value.full, []).append(col)
    return [(",".join(cols), reason) for reason, cols in by_reason.items()]


def summary_frame(rows: list[HeadlineRow]) -> pd.DataFrame:
    """The headline as numbers (summary.tsv): NaN where missing, reasons in ``missing``."""
    records = []
    for row in rows:
        rec: dict[str, Any] = {"system": row.system, "seeds": row.seeds, "n": row.n}
        for metric in METRICS:
            est = row.metrics[metric]
            if isinstance(est, Missing):
                est = stats.Estimate(math.nan, math.nan, 0)
            rec.update({metric: est.mean, f"{metric}_ci95": est.ci95,
                        f"{metric}_seed_sd": est.seed_sd})
        for col in COSTS:
            value = row.costs[col]
            rec[col] = value if isinstance(value, float) else math.nan
        rec["missing"] = "; ".join(f"{cols}: {why}" for cols, why in _missing_note(row))
        records.append(rec)
    return pd.DataFrame(records)


def summary_markdown(rows: list[HeadlineRow]) -> str:
    """The headline as a Markdown table: best per column in bold, the reasons for missing
    cells as numbered notes below."""
    header = ["System", *METRICS.values(), *COSTS.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    reasons: dict[str, int] = {}

    def missing(value: Missing) -> str:
        return f"missing [{reasons.setdefault(value.full, len(reasons) + 1)}]"

    for row in rows:
        cells = [row.system]
        for metric in METRICS:
            est = row.metrics[metric]
            text = missing(est) if isinstance(est, Missing) else fmt_estimate(metric, est) + (
                f" (sd {est.seed_sd:.{DECIMALS.get(metric, 2)}f})" if est.seeds > 1 else "")
            cells.append(f"**{text}**" if metric in row.best else text)
        for col in COSTS:
            value = row.costs[col]
            text = "—" if value is None else missing(value) if isinstance(value, Missing) \
                else fmt_cost(col, value)
            if col == "params_ratio" and row.params_mismatch:
                text += " ⚠"
            cells.append(f"**{text}**" if col in row.best else text)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± 95 % CI over test utterances; with several seeds, the mean over seeds "
              "and (sd) the spread of the seed means. Best per column in bold; ⚠: measured "
              "parameters differ from the claimed count by more than "
              f"{collect.PARAMS_TOLERANCE:.0%}."]
    if reasons:
        lines.append("")
        lines += [f"[{n}] missing: {why.replace('|', '/')}  " for why, n in reasons.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- sections


def significance_context(results: collect.Results) -> dict[str, Any]:
    rows = collect.significance(results)
    if isinstance(rows, Missing):
        return {"missing": f"missing: {rows.full}", "rows": [], "small": ""}
    out, small = [], []
    for row in rows:
        d = DECIMALS.get(row.metric, 2)
        entry = {"system": row.system, "metric": METRICS[row.metric]}
        if isinstance(row.result, Missing):
            entry.update(n="—", diff=str(row.result), title=row.result.full, p="—", p_holm="—",
                         verdict="", cls="missing")
        else:
            r = row.result
            diff = f"{r.mean_diff:+.{d}f}" if math.isfinite(r.mean_diff) else "—"
            if math.isfinite(r.ci95):
                diff += f" ± {r.ci95:.{d}f}"
            if r.note:
                verdict = r.note
                if r.n < stats.MIN_PAIRS:
                    small.append(r.n)
            elif row.significant:
                verdict = "better than baseline" if r.mean_diff > 0 else "worse than baseline"
            else:
                verdict = "no significant difference"
            entry.update(n=r.n, diff=diff, title="", p=fmt_p(r.p), p_holm=fmt_p(row.p_holm),
                         verdict=verdict,
                         cls="better" if row.significant and r.mean_diff > 0 else
                         "worse" if row.significant else "")
        out.append(entry)
    tested = [r for r in rows if isinstance(r.result, stats.Comparison)]
    note = ""
    if small and len(small) == len(tested):
        note = (f"The test set is too small for any conclusion: {max(small)} or fewer paired "
                f"utterances where at least {stats.MIN_PAIRS} are needed; no test was made.")
    elif small:
        note = (f"{len(small)} comparison(s) have fewer than {stats.MIN_PAIRS} paired utterances "
                "(too many failed metrics) and were not tested.")
    return {"missing": "", "rows": out, "small": note}


def _noise_context(results: collect.Results) -> list[dict[str, Any]]:
    tables = []
    for metric in ("pesq_wb", "si_sdr"):
        table = collect.noise_table(results, metric)
        if isinstance(table, Missing):
            tables.append({"title": METRICS[metric], "missing": str(table)})
            continue
        systems = [c for c in table.columns if c != "n"]
        body = []
        decimals = DECIMALS.get(metric, 2)
        for noise, values in table.iterrows():
            best = values[systems].max()
            body.append([Cell(str(noise)), Cell(str(int(values["n"])))] + [
                Cell("—" if not np.isfinite(values[s]) else f"{values[s]:.{decimals}f}",
                     "best" if values[s] == best and len(systems) > 1 else "")
                for s in systems])
        tables.append({"title": METRICS[metric], "missing": "", "systems": systems, "rows": body})
    return tables


def _figure(title: str, caption: str, fig: Any, fmt: str = "svg") -> dict[str, str]:
    if isinstance(fig, Missing):
        return {"title": title, "caption": caption, "missing": str(fig), "uri": ""}
    return {"title": title, "caption": caption, "missing": "", "uri": figures.figure_uri(fig, fmt)}


def _example_context(results: collect.Results) -> dict[str, Any]:
    example = collect.example_audio(results)
    if isinstance(example.utt_id, Missing):
        return {"missing": str(example.utt_id)}
    present = {k: v for k, v in example.signals.items() if not isinstance(v, Missing)}
    players = [{"label": label,
                "uri": figures.audio_uri(wave, example.sample_rate)
                if not isinstance(wave, Missing) else "",
                "missing": str(wave) if isinstance(wave, Missing) else ""}
               for label, wave in example.signals.items()]
    longest = max((len(w) for w in present.values()), default=0) / example.sample_rate
    fig = figures.spectrograms(present, example.sample_rate) if present else \
        Missing("no audio of this utterance could be read")
    return {"missing": "", "utt_id": example.utt_id, "players": players,
            "clipped": longest > figures.AUDIO_SECONDS, "seconds": figures.AUDIO_SECONDS,
            "figure": _figure("Spectrograms", "", fig, "png")}


# --------------------------------------------------------------------------- entry point


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("mbsnet.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["num"] = lambda v: f"{v:,.0f}" if isinstance(v, (int, float)) else v
    return env


def _devices(results: collect.Results) -> list[str]:
    devices = []
    for system in results.ablations:
        if isinstance(system.profile, dict) and system.profile.get("device"):
            devices.append(f"{system.profile['device']} (profile)")
        for run in system.runs:
            if isinstance(run.train_summary, dict) and run.train_summary.get("device"):
                devices.append(f"{run.train_summary['device']} (training)")
    return devices


def build_report(config: Mapping[str, Any], results_dir: str | Path,
                 project_dir: str | Path = ".",
                 progress: Callable[[str], None] | None = None) -> tuple[str, list[HeadlineRow]]:
    """The report's HTML and its headline rows."""
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"report: reading {results_dir}")
    results = collect.load_results(results_dir, config)
    rows = collect.headline(results)
    colors = figures.system_colors(list(results.systems))
    scores = {name: s for name, s in
              ((name, collect.system_scores(sys_)) for name, sys_ in results.systems.items())
              if isinstance(s, pd.DataFrame)}
    say("report: drawing figures")
    figs = [
        _figure("Training curves", "Generator loss (training mean) and validation PESQ-WB per "
                "epoch; fainter lines are further seeds.",
                figures.training_curves(collect.training_curves(results), colors)),
        _figure("Metrics", "Mean over test utterances with 95 % CI.",
                figures.metric_bars(rows, colors)),
        _figure("Metrics vs input SNR", "Mean per SNR of the test set; dashed: noisy input.",
                figures.metric_vs_snr(scores, colors)),
        _figure("Efficiency", "PESQ-WB (95 % CI) against measured parameters and peak training "
                "memory at the configured batch.", figures.efficiency(rows, colors)),
    ]
    say("report: spectrograms and audio")
    example = _example_context(results)
    context = {
        "baseline": results.baseline,
        "metrics": list(METRICS.values()),
        "costs": list(COSTS.values()),
        "headline": [{"system": r.system, "seeds": r.seeds, "n": r.n,
                      "cells": headline_cells(r)} for r in rows],
        "several_seeds": len(config.get("seeds", [0])) > 1,
        "tolerance": f"{collect.PARAMS_TOLERANCE:.0%}",
        "significance": significance_context(results),
        "min_pairs": stats.MIN_PAIRS,
        "alpha": stats.ALPHA,
        "figures": figs,
        "noise_tables": _noise_context(results),
        "example": example,
        "health": collect.health(results),
        "placements": collect.placements(results),
        "provenance": provenance(config, project_dir, _devices(results)),
    }
    html = _environment().get_template("report.html.j2").render(**context)
    return html, rows


def write_report(config: Mapping[str, Any], results_dir: str | Path, out: str | Path,
                 project_dir: str | Path = ".",
                 progress: Callable[[str], None] | None = None) -> list[Path]:
    """Write ``out`` (HTML) and summary.tsv / summary.md beside it, each atomically;
    everything is built before anything is written."""
    out = Path(out)
    html, rows = build_report(config, results_dir, project_dir, progress)
    tsv = summary_frame(rows).to_csv(sep="\t", index=False, float_format="%.6g", na_rep="")
    markdown = summary_markdown(rows)
    paths = [out.parent / "summary.tsv", out.parent / "summary.md", out]
    for path, text in zip(paths, [tsv, markdown, html]):
        write_text(path, text)
    return paths
