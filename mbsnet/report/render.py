"""Assemble the report: tables and figures into the HTML template, written with
summary.tsv and summary.md (:mod:`.summary`)."""

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
from ..metrics.registry import METRIC_SPECS
from . import figures, health, placements, step_views, steps, tables
from .costs import COST_SPECS, PARAMS_TOLERANCE
from .example import example_audio
from .formatting import (
    Cell,
    decimals,
    fmt_cost,
    fmt_diff,
    fmt_p,
    fmt_seeds,
    merge_missing,
    no_difference,
)
from .loading import Missing, Results, load_results, system_scores
from .provenance import provenance
from .steps import Detectable, StepTable
from .summary import summary_frame, summary_markdown
from .tables import HeadlineRow


def _metric_cell(row: HeadlineRow, metric: str) -> Cell:
    est = row.metrics[metric]
    if isinstance(est, Missing):
        return Cell(str(est), "missing", est.full)
    d = decimals(metric)
    cell = Cell(f"{est.mean:.{d}f}", "best" if metric in row.best else "",
                f"n = {est.n} utterances")
    if math.isfinite(est.ci95):
        cell.sub.append(f"± {est.ci95:.{d}f}")
    if est.seeds > 1:
        cell.sub.append(f"sd {est.seed_sd:.{d}f}")
        cell.title += f"; {fmt_seeds(metric, est)}"
    return cell


def _cost_cell(row: HeadlineRow, col: str) -> Cell:
    value = row.costs[col]
    if value is None:
        return Cell("—", "na", "not applicable")
    if isinstance(value, Missing):
        return Cell(str(value), "missing", value.full)
    cls = "best" if col in row.best else ""
    title = ""
    if COST_SPECS[col].claim_checked and row.params_mismatch:
        cls, title = "mismatch", (f"measured differs from the claimed count by more "
                                  f"than {PARAMS_TOLERANCE:.0%}")
    return Cell(fmt_cost(col, value), cls, title)


def headline_cells(row: HeadlineRow) -> list[Cell]:
    """The HTML cells of one headline row (metrics then costs), identical adjacent
    "missing" cells merged into one."""
    return merge_missing([_metric_cell(row, metric) for metric in METRIC_SPECS]
                         + [_cost_cell(row, col) for col in COST_SPECS])


# --------------------------------------------------------------------------- sections


def significance_context(results: Results) -> dict[str, Any]:
    rows = tables.significance(results)
    if isinstance(rows, Missing):
        return {"missing": f"missing: {rows.full}", "rows": [], "small": "", "tests": 0}
    out: list[dict[str, Any]] = []
    small: list[int] = []
    for row in rows:
        spec = METRIC_SPECS[row.metric]
        entry: dict[str, Any] = {"system": row.system, "metric": spec.label}
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
                verdict = "better than baseline" if spec.better(r.mean_diff) \
                    else "worse than baseline"
            else:
                verdict = no_difference(row.metric, row.detectable)
            entry.update(n=r.n, diff=diff, title="", p=fmt_p(r.p), p_holm=fmt_p(row.p_holm),
                         verdict=verdict,
                         cls="better" if row.significant and spec.better(r.mean_diff) else
                         "worse" if row.significant else "")
        out.append(entry)
    tested = [r.result for r in rows if isinstance(r.result, stats.Comparison)]
    note = ""
    if small and len(small) == len(tested):
        note = (f"The test set is too small for any conclusion: {max(small)} or fewer paired "
                f"utterances where at least {stats.MIN_PAIRS} are needed; no test was made.")
    elif small:
        note = (f"{len(small)} comparison(s) have fewer than {stats.MIN_PAIRS} paired utterances "
                "(too many failed metrics) and were not tested.")
    # Holm corrects over the tests made, not over the rows (a missing system is not tested)
    made = sum(math.isfinite(c.p) for c in tested)
    return {"missing": "", "rows": out, "small": note, "tests": made}


def _noise_context(results: Results) -> list[dict[str, Any]]:
    """The per-noise tables of the metrics the registry tabulates so."""
    out: list[dict[str, Any]] = []
    for spec in METRIC_SPECS.values():
        if not spec.per_noise:
            continue
        table = tables.noise_table(results, spec.name)
        if isinstance(table, Missing):
            out.append({"title": spec.label, "missing": str(table)})
            continue
        systems = [c for c in table.columns if c != "n"]
        body = []
        for noise, values in table.iterrows():
            best = values[systems].max() if spec.higher_is_better else values[systems].min()
            body.append([Cell(str(noise)), Cell(str(int(values["n"])))] + [
                Cell("—" if not np.isfinite(values[s]) else f"{values[s]:.{spec.decimals}f}",
                     "best" if values[s] == best and len(systems) > 1 else "")
                for s in systems])
        out.append({"title": spec.label, "missing": "", "systems": systems, "rows": body})
    return out


def _figure(title: str, caption: str, fig: Any, fmt: str = "svg") -> dict[str, str]:
    if isinstance(fig, Missing):
        return {"title": title, "caption": caption, "missing": str(fig), "uri": ""}
    return {"title": title, "caption": caption, "missing": "", "uri": figures.figure_uri(fig, fmt)}


def _example_context(results: Results) -> dict[str, Any]:
    example = example_audio(results)
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


def _devices(results: Results) -> list[str]:
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


def _step_section(table: StepTable | Missing, detectable: dict[str, Detectable | Missing],
                  rows: list[HeadlineRow]) -> dict[str, Any]:
    section = step_views.steps_context(table, detectable)
    section["figure"] = _figure(
        "Steps", "Each bar runs from the parent's mean to the child's, in the table's order "
        "(a dotted line joins a chain); green: better (cheaper), red: worse (dearer); pale: "
        "no difference detected; whiskers: the 95 % CI of the paired difference.",
        figures.step_waterfall(table, rows) if isinstance(table, StepTable) else table)
    return section


def _figures(results: Results, rows: list[HeadlineRow]) -> list[dict[str, str]]:
    """The "Figures" section: training curves, metric bars, metrics vs SNR, efficiency."""
    colors = figures.system_colors(list(results.systems))
    scores = {name: s for name, s in
              ((name, system_scores(sys_)) for name, sys_ in results.systems.items())
              if isinstance(s, pd.DataFrame)}
    return [
        _figure("Training curves", "Generator loss (training mean) and validation PESQ-WB per "
                "epoch; fainter lines are further seeds.",
                figures.training_curves(tables.training_curves(results), colors)),
        _figure("Metrics", "Mean over test utterances with 95 % CI.",
                figures.metric_bars(rows, colors)),
        _figure("Metrics vs input SNR", "Mean per SNR of the test set; dashed: noisy input.",
                figures.metric_vs_snr(scores, colors)),
        _figure("Efficiency", "PESQ-WB (95 % CI) against measured parameters and peak training "
                "memory at the configured batch.", figures.efficiency(rows, colors)),
    ]


def _in_words(labels: list[str]) -> str:
    """``A``, ``A and B``, ``A, B and C``."""
    return " and ".join(filter(None, [", ".join(labels[:-1]), *labels[-1:]]))


def _build(config: Mapping[str, Any], results_dir: str | Path, project_dir: str | Path,
           progress: Callable[[str], None] | None) -> _Built:
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"report: reading {results_dir}")
    results = load_results(results_dir, config)
    rows = tables.headline(results)
    table = steps.step_table(results, rows)
    detectable = steps.detectable_table(table) if isinstance(table, StepTable) else {}
    say("report: drawing figures")
    step_section = _step_section(table, detectable, rows)
    figs = _figures(results, rows)
    say("report: spectrograms and audio")
    example = _example_context(results)
    context = {
        "baseline": results.baseline,
        "metrics": [spec.label for spec in METRIC_SPECS.values()],
        "tested_metrics": _in_words([s.label for s in METRIC_SPECS.values() if s.tested]),
        "costs": [spec.label for spec in COST_SPECS.values()],
        "headline": [{"system": r.system, "seeds": r.seeds, "n": r.n,
                      "cells": headline_cells(r)} for r in rows],
        "several_seeds": len(config.get("seeds", [0])) > 1,
        "tolerance": f"{PARAMS_TOLERANCE:.0%}",
        "significance": significance_context(results),
        "steps": step_section,
        "min_pairs": stats.MIN_PAIRS,
        "alpha": stats.ALPHA,
        "figures": figs,
        "noise_tables": _noise_context(results),
        "example": example,
        "health": health.health(results),
        "placements": placements.placements(results),
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
    for path, text in zip(paths, [tsv, markdown, built.html], strict=True):
        write_text(path, text)
    return paths
