"""Assemble the report: tables and figures into the HTML template, plus summary.tsv/.md."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from .. import stats
from ..atomic import write_text
from . import collect, figures, step_views, steps
from .collect import COSTS, METRICS, HeadlineRow, Missing
from .formatting import (
    DECIMALS,
    Cell,
    fmt_cost,
    fmt_diff,
    fmt_estimate,
    fmt_p,
    fmt_seeds,
    merge_missing,
    no_difference,
)
from .provenance import provenance
from .steps import Detectable, StepTable


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
    return merge_missing(cells)


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
        rec.update(step_records.get(row.system, blank))
        records.append(rec)
    return pd.DataFrame(records)


def summary_markdown(rows: list[HeadlineRow], table: StepTable | Missing | None = None,
                     detect: dict[str, Detectable | Missing] | None = None) -> str:
    """The headline as a Markdown table: best per column in bold, the reasons for missing
    cells as numbered notes below; with ``table`` and ``detect``, the step sections after."""
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
              f"{collect.PARAMS_TOLERANCE:.0%}. Train wall time in minutes:seconds, the mean "
              "over seeds (summary.tsv: train_wall_seconds, in seconds)."]
    if reasons:
        lines.append("")
        lines += [f"[{n}] missing: {why.replace('|', '/')}  " for why, n in reasons.items()]
    text = "\n".join(lines) + "\n"
    if table is not None:
        text += "\n" + step_views.steps_markdown(table, detect or {})
    return text


# --------------------------------------------------------------------------- sections


def significance_context(results: collect.Results) -> dict[str, Any]:
    rows = collect.significance(results)
    if isinstance(rows, Missing):
        return {"missing": f"missing: {rows.full}", "rows": [], "small": "", "tests": 0}
    out, small = [], []
    for row in rows:
        entry = {"system": row.system, "metric": METRICS[row.metric]}
        if isinstance(row.result, Missing):
            entry.update(n="—", diff=str(row.result), title=row.result.full, p="—", p_holm="—",
                         verdict="", cls="missing")
        else:
            r = row.result
            diff = fmt_diff(row.metric, r.mean_diff, r.ci95)
            if r.note:
                verdict = r.note
                if r.n < stats.MIN_PAIRS:
                    small.append(r.n)
            elif row.significant:
                verdict = "better than baseline" if r.mean_diff > 0 else "worse than baseline"
            else:
                verdict = no_difference(row.metric, row.detectable)
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
    # Holm corrects over the tests made, not over the rows (a missing system is not tested)
    made = sum(math.isfinite(r.result.p) for r in tested)
    return {"missing": "", "rows": out, "small": note, "tests": made}


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
                "missing": str(wave) if isinstance(wave, Missing) else "",
                "title": wave.full if isinstance(wave, Missing) else ""}
               for label, wave in example.signals.items()]
    longest = max((len(w) for w in present.values()), default=0) / example.sample_rate
    fig = figures.spectrograms(present, example.sample_rate) if present else \
        Missing("no audio of this utterance could be read")
    caption = ("Log-magnitude spectrograms of the whole utterance, one panel per signal with a "
               f"player above, on one colour scale ({figures.DYNAMIC_RANGE_DB:.0f} dB below the "
               "loudest bin).")
    return {"missing": "", "utt_id": example.utt_id, "players": players,
            "clipped": longest > figures.AUDIO_SECONDS, "seconds": figures.AUDIO_SECONDS,
            "several_seeds": any(len(s.runs) > 1 for s in results.ablations),
            "figure": _figure("Spectrograms", caption, fig, "png")}


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


@dataclass
class _Built:
    html: str
    rows: list[HeadlineRow]
    steps: StepTable | Missing
    detectable: dict[str, Detectable | Missing]


def _build(config: Mapping[str, Any], results_dir: str | Path, project_dir: str | Path,
           progress: Callable[[str], None] | None) -> _Built:
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"report: reading {results_dir}")
    results = collect.load_results(results_dir, config)
    rows = collect.headline(results)
    table = steps.step_table(results, rows)
    detectable = steps.detectable_table(table) if isinstance(table, StepTable) else {}
    colors = figures.system_colors(list(results.systems))
    scores = {name: s for name, s in
              ((name, collect.system_scores(sys_)) for name, sys_ in results.systems.items())
              if isinstance(s, pd.DataFrame)}
    say("report: drawing figures")
    step_section = step_views.steps_context(table, detectable)
    step_section["figure"] = _figure(
        "Steps", "Each bar runs from the parent's mean to the child's, in the table's order "
        "(a dotted line joins a chain); green: better (cheaper), red: worse (dearer); pale: "
        "no difference detected; whiskers: the 95 % CI of the paired difference.",
        figures.step_waterfall(table, rows) if isinstance(table, StepTable) else table)
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
        "steps": step_section,
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
    return _Built(html, rows, table, detectable)


def build_report(config: Mapping[str, Any], results_dir: str | Path,
                 project_dir: str | Path = ".",
                 progress: Callable[[str], None] | None = None) -> tuple[str, list[HeadlineRow]]:
    """The report's HTML and its headline rows."""
    built = _build(config, results_dir, project_dir, progress)
    return built.html, built.rows


def write_report(config: Mapping[str, Any], results_dir: str | Path, out: str | Path,
                 project_dir: str | Path = ".",
                 progress: Callable[[str], None] | None = None) -> list[Path]:
    """Write ``out`` (HTML) and summary.tsv / summary.md beside it, each atomically;
    everything is built before anything is written."""
    out = Path(out)
    built = _build(config, results_dir, project_dir, progress)
    tsv = summary_frame(built.rows, built.steps).to_csv(sep="\t", index=False,
                                                        float_format="%.6g", na_rep="")
    markdown = summary_markdown(built.rows, built.steps, built.detectable)
    paths = [out.parent / "summary.tsv", out.parent / "summary.md", out]
    for path, text in zip(paths, [tsv, markdown, built.html]):
        write_text(path, text)
    return paths
