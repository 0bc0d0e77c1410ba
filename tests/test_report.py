"""The comparison report: statistics, tables, files written, missing pieces, and the page
as headless Chromium renders it."""

from __future__ import annotations

import base64
import fcntl
import json
import math
import os
import re
import select
import shutil
import subprocess
import time
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import yaml
from markupsafe import escape  # as Jinja2 escapes
from scipy import stats as scipy_stats

from mbsnet import stats
from mbsnet.cli import main
from mbsnet.config import config_hash, load_config
from mbsnet.evaluation.evaluate import COLUMNS as EVALUATION_COLUMNS
from mbsnet.evaluation.evaluate import evaluate
from mbsnet.metrics import composite_scores, score_pair
from mbsnet.metrics.registry import METRIC_SPECS
from mbsnet.report import render, step_views, steps
from mbsnet.report.costs import COST_SPECS
from mbsnet.report.example import example_audio
from mbsnet.report.formatting import fmt_cost, fmt_cost_delta
from mbsnet.report.loading import METRIC_COLUMNS, Missing, load_results
from mbsnet.report.placements import device_kind, placements
from mbsnet.report.summary import summary_frame, summary_markdown
from mbsnet.report.tables import headline, noise_table, significance, training_curves

from .helpers import ROOT
from .report_fixture import make_results_tree

CHROMIUM = "/usr/bin/chromium"
ALL = ("bsrnn", "abl1", "abl2", "abl3", "optimized")


# --------------------------------------------------------------------------- statistics


def test_t_interval_matches_hand_computation():
    # mean 3, sd sqrt(2.5), t(0.975, 4) = 2.7764451 from tables -> 2.7764451 * sqrt(2.5 / 5)
    est = stats.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0, float("nan")])
    assert est.mean == 3.0
    assert est.n == 5
    assert est.ci95 == pytest.approx(2.7764451 * math.sqrt(0.5), abs=1e-6)
    assert math.isnan(stats.mean_ci([4.0]).ci95)
    assert stats.mean_ci([]).n == 0


def test_seed_estimate_averages_seeds_and_reports_their_spread():
    s0 = pd.Series([1.0, 2.0, 3.0], index=["a", "b", "c"])
    s1 = pd.Series([2.0, 4.0, 6.0], index=["a", "b", "c"])
    est = stats.seed_estimate([s0, s1])
    assert est.mean == pytest.approx(3.0)           # (2 + 4) / 2
    assert est.seeds == 2
    assert est.seed_sd == pytest.approx(math.sqrt(2.0))   # sd of [2, 4]
    # CI over the per-utterance seed averages [1.5, 3, 4.5]: sd 1.5, t(0.975, 2) = 4.3026527
    assert est.ci95 == pytest.approx(4.3026527 * 1.5 / math.sqrt(3), abs=1e-6)


def test_holm_against_hand_computed_values():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]
    out = stats.holm([0.02, float("nan"), 0.01])    # NaN is not a test: m = 2
    assert out[0] == pytest.approx(0.02)
    assert math.isnan(out[1])
    assert out[2] == pytest.approx(0.02)


def test_paired_comparison_exact_wilcoxon_and_small_samples():
    ids = [f"u{i}" for i in range(10)]
    base = pd.Series(np.zeros(10), index=ids)
    system = pd.Series(np.arange(1.0, 11.0), index=ids[::-1])   # paired by id, not position
    result = stats.paired_comparison(system, base)
    # every difference positive, n = 10: exact two-sided p = 2 / 2**10
    assert result.n == 10
    assert result.p == pytest.approx(2 / 1024)
    assert result.mean_diff == pytest.approx(5.5)
    assert result.sd == pytest.approx(math.sqrt(55 / 6))          # sd of 1..10
    small = stats.paired_comparison(system.iloc[:6], base)
    assert small.n == 6
    assert math.isnan(small.p)
    assert "too few" in small.note
    zero = stats.paired_comparison(base, base)
    assert math.isnan(zero.p)
    assert "zero" in zero.note


def test_detectable_difference_is_the_t_size_with_the_wilcoxon_efficiency():
    # t(0.975, 23) = 2.0686576, t(0.80, 23) = 0.8575296 (tables); n * 3 / pi = 22.918312
    assert stats.detectable_difference(1.0, 24) == pytest.approx(
        (2.0686576 + 0.8575296) / math.sqrt(24 * 3 / math.pi), rel=1e-6)
    # 12 tests: Bonferroni's level 0.05 / 12, the quantile from scipy
    expected = (scipy_stats.t.ppf(1 - 0.05 / 24, 23) + scipy_stats.t.ppf(0.8, 23)) \
        * 2.5 / math.sqrt(24 * 3 / math.pi)
    assert stats.detectable_difference(2.5, 24, tests=12) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(stats.detectable_difference(1.0, 1))
    assert math.isnan(stats.detectable_difference(math.nan, 24))


def test_detectable_difference_has_the_stated_power():
    """Simulated: a true effect of the detectable size, normal paired differences, the
    report's Wilcoxon test at the Bonferroni level: found about 80 % of the time."""
    n, tests, sd = 24, 6, 1.3
    size = stats.detectable_difference(sd, n, tests)
    rng = np.random.default_rng(7)
    diffs = rng.normal(size, sd, size=(4000, n))
    p = scipy_stats.wilcoxon(diffs, axis=1).pvalue
    assert np.mean(p < stats.ALPHA / tests) == pytest.approx(stats.POWER, abs=0.03)
    # and a quarter of it: rarely
    p_small = scipy_stats.wilcoxon(diffs - 0.75 * size, axis=1).pvalue
    assert np.mean(p_small < stats.ALPHA / tests) < 0.1


def test_pairs_needed_inverts_the_detectable_size():
    n = stats.pairs_needed(1.5, 0.5, tests=8)
    size = [stats.detectable_difference(1.5, k, tests=8) for k in (n - 1, n)]
    assert size[1] <= 0.5 < size[0]
    assert stats.pairs_needed(0.0, 0.1) == 2
    with pytest.raises(ValueError, match="positive difference"):
        stats.pairs_needed(1.0, 0.0)


# --------------------------------------------------------------------------- registries

METRIC_PAIR = ROOT / "tests" / "data" / "metrics" / "arctic_a0007_pink_5dB"


def test_scoring_writes_the_columns_the_registry_names():
    """The metric functions' output, evaluation's metrics.tsv header and the registry
    name the same metrics in the same order."""
    clean, _ = sf.read(f"{METRIC_PAIR}_clean.wav", dtype="float64")
    degraded, _ = sf.read(f"{METRIC_PAIR}_degraded.wav", dtype="float64")
    row = score_pair(clean, degraded)
    assert list(row) == [*METRIC_SPECS, "error"]
    assert row["error"] == ""
    assert set(composite_scores(clean, degraded, row["pesq_wb"])) <= set(METRIC_SPECS)
    assert list(EVALUATION_COLUMNS) == METRIC_COLUMNS


def test_each_cost_is_written_in_its_style():
    values = {"params": 2_410_000.0, "claimed_params": 950.0, "params_ratio": 1.45,
              "macs_per_second": 3.1e9, "peak_train_memory_mb": 14000.0,
              "train_step_seconds": 0.25, "inference_rtf": 0.0512,
              "train_wall_seconds": 3725.0}
    assert list(values) == list(COST_SPECS)
    assert [fmt_cost(col, value) for col, value in values.items()] == [
        "2.41 M", "950", "×1.45", "3.10 G", "14,000", "0.25", "0.0512", "62:05"]
    assert fmt_cost_delta("params", -20_000.0) == "-20.00 k"
    # a step's cost change is coloured as a saving or not: it needs a direction
    assert all(spec.lower_is_better is not None for spec in COST_SPECS.values()
               if spec.in_steps)


def test_the_report_follows_the_registries(tmp_path, monkeypatch):
    """Decimals, the tested metrics and a cost's style come from the registries."""
    config, results = make_results_tree(tmp_path, ablations=("bsrnn", "abl1"))
    monkeypatch.setitem(METRIC_SPECS, "stoi", replace(METRIC_SPECS["stoi"], decimals=4,
                                                      tested=True))
    monkeypatch.setitem(COST_SPECS, "inference_rtf", replace(COST_SPECS["inference_rtf"],
                                                             style="ratio"))
    res = load_results(results, load_config(config))
    rows = headline(res)
    stoi = rows[1].metrics["stoi"]
    cells = render.headline_cells(rows[1])
    assert cells[list(METRIC_SPECS).index("stoi")].text == f"{stoi.mean:.4f}"
    assert cells[len(METRIC_SPECS) + list(COST_SPECS).index("inference_rtf")].text == "×0.05"
    assert f"{stoi.mean:.4f} ± {stoi.ci95:.4f}" in summary_markdown(rows)
    assert [r.metric for r in significance(res)] == ["pesq_wb", "stoi", "si_sdr"]


# --------------------------------------------------------------------------- rendering


class _Tables(HTMLParser):
    """Rows of every <table> with an id: {id: [[cell text, ...], ...]} (body rows only)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table = self._row = None
        self._in_body = self._in_cell = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id"):
            self._table = self.tables.setdefault(attrs["id"], [])
        elif tag == "tbody" and self._table is not None:
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
            self._table.append(self._row)
        elif tag == "td" and self._row is not None:
            self._row.append("")
            self._in_cell = True

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_cell = False
        elif tag == "table":
            self._table, self._row, self._in_body = None, None, False

    def handle_data(self, data):
        if self._in_cell and self._row is not None:
            self._row[-1] += data


def _tables(html: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The report of a tree where abl3's training failed, `optimized` never ran and abl2
    has no profile (rendered once: drawing the figures takes seconds)."""
    root = tmp_path_factory.mktemp("report")
    config, results = make_results_tree(root, ablations=ALL, failed_training=("abl3",),
                                        never_run=("optimized",), no_profile=("abl2",))
    out = results / "report.html"
    assert main(["report", "--config", str(config), "--results", str(results),
                 "--out", str(out)]) == 0
    return out


def test_report_from_fixture_tree(report):
    html = report.read_text()
    rows = _tables(html)["headline"]
    assert [r[0] for r in rows] == ["noisy", *ALL]
    # the noisy row's PESQ cell is the mean ± CI of noisy/eval/metrics.tsv
    noisy = pd.read_csv(report.parent / "noisy" / "eval" / "metrics.tsv", sep="\t")["pesq_wb"]
    expected = stats.mean_ci(noisy.to_numpy())
    assert rows[0][3] == f"{expected.mean:.2f}± {expected.ci95:.2f}"

    tsv = pd.read_csv(report.parent / "summary.tsv", sep="\t")
    assert list(tsv["system"]) == ["noisy", *ALL]
    abl1 = pd.read_csv(report.parent / "abl1" / "seed0" / "eval" / "metrics.tsv", sep="\t")
    row = tsv.set_index("system").loc["abl1"]
    assert row["pesq_wb"] == pytest.approx(abl1["pesq_wb"].mean(), rel=1e-5)   # NaN left out
    assert row["si_sdr_ci95"] == pytest.approx(stats.mean_ci(abl1["si_sdr"]).ci95, rel=1e-5)
    assert row["params"] == 2_610_000
    assert row["params_ratio"] == pytest.approx(2.61 / 1.8, rel=1e-5)
    assert row["train_wall_seconds"] == 3725.0                   # seconds, a number
    assert tsv.columns[tsv.columns.get_loc("inference_rtf") + 1] == "train_wall_seconds"

    md = (report.parent / "summary.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in md[2:8]] == ["noisy", *ALL]
    assert "**2.83 ± 0.18**" in md[4]
    assert "×1.45 ⚠" in md[4]
    # the wall time as its header says, in minutes:seconds: 3725 s
    assert md[0].split("|")[-2].strip() == "Train wall time (min:s)"
    assert md[3].split("|")[-2].strip() == "62:05"              # bsrnn
    assert "Train wall time in minutes:seconds" in md[9]
    assert "<th>Train wall time (min:s)</th></tr>" in html
    assert rows[1][-1] == "62:05"

    # parameter mismatch flagged in red, with the ratio
    assert '<td class="mismatch"' in html
    assert "×1.45" in html
    # health: skipped step, failed utterance with its reason, resume, memory warning
    assert "non-finite generator loss ×1" in html
    assert "No utterances detected" in html
    assert "test_004" in html
    assert "epoch 2 step 8 from checkpoint/last.pt" in html
    assert "peak training memory 14,000 MB at batch 6 exceeds the 12 GB budget" in html
    assert "peak 10.1 GB is 84 % of the 12 GB budget" in html   # profile.json warnings
    # provenance, audio and self-containedness
    assert config_hash(load_config(report.parents[1] / "config.yaml")) in html
    assert "<details><summary>Resolved config</summary>" in html
    assert "3.11" in html
    assert "9.27.1" in html
    assert not any(s in html for s in ('src="http', 'href="http', "@import", "url("))
    assert html.count("data:audio/wav;base64,") == 5          # clean, noisy, 3 trained ablations
    assert html.count("data:image/svg+xml;base64,") == 5      # four figures and the steps
    assert html.count("data:image/png;base64,") == 1          # the spectrograms


def test_missing_pieces_render_as_missing_cells(report):
    html = report.read_text()
    rows = {r[0]: r for r in _tables(html)["headline"]}
    assert rows["abl3"][3] == "missing: training did not finish"
    assert rows["optimized"][3] == "missing: not run"
    assert rows["abl2"][3][0].isdigit()                               # scored all the same
    assert "missing: not profiled" in rows["abl2"]
    assert rows["optimized"][-1] == "missing: not run"               # training wall time
    # the evidence: the log the workflow left, in the cell's tooltip and under Health
    evidence = ('training did not finish (1 epoch(s) logged, no abl3/seed0/train_summary.json; '
                'see logs/train/abl3_seed0.log: "mbsnet train: error: 20 consecutive non-finite '
                'steps")')
    assert f'<td class="missing" colspan="8" title="{escape(evidence)}">' in html
    assert f"<b>abl3 seed 0</b>: missing: {escape(evidence)}</li>" in html
    assert "<b>abl2 profile</b>: missing: not profiled (no abl2/profile.json)" in html
    assert "missing: abl3 was not scored" in html                    # its audio player
    # 8 rows against the baseline, 4 of them tested (abl3 and optimized have no scores)
    assert len(_tables(html)["significance-table"]) == 8
    assert re.search(r"Holm-corrected over the 4\s+comparison\(s\) tested", html)
    tsv = pd.read_csv(report.parent / "summary.tsv", sep="\t").set_index("system")
    assert math.isnan(tsv.loc["abl3", "pesq_wb"])
    assert tsv.loc["optimized", "missing"] == (
        "pesq_wb,csig,cbak,covl,ssnr,stoi,estoi,si_sdr,train_wall_seconds: not run (no "
        "optimized/seed0/); macs_per_second,peak_train_memory_mb,train_step_seconds,inference_rtf,"
        "params,params_ratio: not profiled (no optimized/profile.json)")
    assert tsv.loc["abl2", "missing"] == ("macs_per_second,peak_train_memory_mb,train_step_seconds,"
                                          "inference_rtf: not profiled (no abl2/profile.json)")
    md = (report.parent / "summary.md").read_text()
    assert "missing [1]" in md
    assert "] missing: not profiled (no abl2/profile.json)" in md


def test_devices_and_scans_of_each_ablation(report):
    rows = {r[0]: r[1:] for r in _tables(report.read_text())["devices"]}
    assert list(rows) == list(ALL)
    assert rows["bsrnn"] == ["cpu", "none (no Mamba block)", "cpu", "none (no Mamba block)",
                             "2", "1.50", ""]
    # profiled and trained on the same kind of GPU, with different indices: no note
    assert rows["abl1"] == ["cuda:0 (NVIDIA H100)", "mamba_ssm",
                            "cuda:1 = GPU 3 (NVIDIA H100)", "mamba_ssm", "2", "1.50", ""]
    # data-parallel: every process's device, and how the global batch is divided
    assert rows["abl2"] == ["missing: not profiled", "missing: not profiled",
                            "2 processes: cpu, cpu", "chunked",
                            "8 = 2 x 2 x 2 (processes x micro-batches x items)", "3.25", ""]
    assert rows["abl3"][2:] == ["not trained"] * 4 + [""]


def test_a_profile_on_another_device_or_scan_than_the_training_is_flagged(tmp_path):
    config, results = make_results_tree(tmp_path, ablations=("bsrnn", "abl1"), seeds=(0, 1))
    summary_path = results / "abl1" / "seed1" / "train_summary.json"
    summary = json.loads(summary_path.read_text())
    summary.update(device="cpu", scan="chunked")
    summary_path.write_text(json.dumps(summary))
    old = results / "bsrnn" / "profile.json"         # written before profiles recorded a scan
    old.write_text(json.dumps({k: v for k, v in json.loads(old.read_text()).items()
                               if k != "scan"}))
    rows = {p.system: p for p in placements(load_results(
        results, load_config(config)))}
    abl1 = rows["abl1"]
    assert abl1.train_device == ("cuda:1 = GPU 3 (NVIDIA H100) (seed 0); cpu (seed 1)")
    assert abl1.train_scan == "mamba_ssm (seed 0); chunked (seed 1)"
    assert abl1.notes == ["profiled on NVIDIA H100 but trained on cpu: the memory budget was "
                          "checked on another device",
                          "profiled with the mamba_ssm scan but trained with chunked"]
    assert (rows["bsrnn"].profile_scan, rows["bsrnn"].notes) == ("not recorded", [])


def test_device_kind_ignores_the_index():
    assert device_kind("cuda:1 = GPU 5 (NVIDIA A100)") == "NVIDIA A100"
    assert device_kind("cuda:0 (NVIDIA A100)") == "NVIDIA A100"
    assert device_kind("cpu") == "cpu"


def test_corrupt_files_render_as_missing(tmp_path, monkeypatch):
    config, results = make_results_tree(tmp_path)
    (results / "bsrnn" / "seed0" / "train_summary.json").write_text("{not json")
    profile = json.loads((results / "abl1" / "profile.json").read_text())
    profile.update(params=5, macs_per_second="fast")
    (results / "abl1" / "profile.json").write_text(json.dumps(profile))
    (results / "abl2" / "seed0" / "eval" / "metrics.tsv").write_text("utt_id\tpesq_wb\nx\t1\n")
    (results / "noisy" / "eval" / "metrics.tsv").write_text("")
    (results / "data" / "manifest.tsv").unlink()
    monkeypatch.setattr(render.figures, "figure_uri", lambda fig, fmt="svg": "data:,")
    html, rows = render.build_report(load_config(config), results, progress=lambda msg: None)
    rows = {r.system: r for r in rows}
    assert str(rows["noisy"].metrics["pesq_wb"]) == "missing: unreadable noisy/eval/metrics.tsv"
    assert rows["abl2"].metrics["stoi"].reason.startswith("abl2/seed0/eval/metrics.tsv lacks "
                                                          "columns system, snr, noise, csig")
    assert rows["bsrnn"].metrics["pesq_wb"].n == 12              # scored despite the summary
    assert rows["bsrnn"].costs["train_wall_seconds"].reason == \
        "unreadable bsrnn/seed0/train_summary.json"
    assert str(rows["abl1"].costs["macs_per_second"]) == \
        "missing: no macs_per_second in profile.json"
    assert rows["abl1"].costs["params"] == 2_610_000            # from train_summary.json
    assert "missing: no data/manifest.tsv" in html               # the example utterance


def test_significance_against_baseline(tmp_path):
    config, results = make_results_tree(tmp_path, n_test=12)
    res = load_results(results, load_config(config))
    rows = significance(res)
    assert [(r.system, r.metric) for r in rows] == [
        ("abl1", "pesq_wb"), ("abl1", "si_sdr"), ("abl2", "pesq_wb"), ("abl2", "si_sdr")]
    assert rows[0].result.n == 11                  # abl1's failed PESQ utterance is unpaired
    assert rows[1].result.n == 12
    assert rows[0].result.p == pytest.approx(2 / 2**11)   # all 11 differences positive
    assert [r.p_holm for r in rows] == pytest.approx(stats.holm([r.result.p for r in rows]))
    assert all(r.significant for r in rows)
    assert rows[0].result.mean_diff > 0
    assert rows[2].result.mean_diff < 0
    context = render.significance_context(res)
    assert context["small"] == ""
    assert [r["verdict"] for r in context["rows"]] == ["better than baseline"] * 2 + [
        "worse than baseline"] * 2


def test_too_small_test_set_is_said_plainly(tmp_path):
    config, results = make_results_tree(tmp_path, n_test=6, ablations=("bsrnn", "abl1"))
    context = render.significance_context(load_results(results, load_config(config)))
    assert context["small"].startswith("The test set is too small for any conclusion: 6")
    assert [r["verdict"] for r in context["rows"]] == [   # abl1's PESQ failed on one of them
        "too few paired utterances for a conclusion (5 < 10)",
        "too few paired utterances for a conclusion (6 < 10)"]
    assert [r["p_holm"] for r in context["rows"]] == ["—", "—"]
    assert context["tests"] == 0                                     # none was made


# --------------------------------------------------------------------------- steps


def _metrics_file(results: Path, system: str, seed: int = 0) -> Path:
    return results / system / f"seed{seed}" / "eval" / "metrics.tsv"


def _read_metrics(results: Path, system: str, seed: int = 0) -> pd.DataFrame:
    return pd.read_csv(_metrics_file(results, system, seed), sep="\t", keep_default_na=False,
                       na_values=["nan"], dtype={"error": str})


def _set_metric(results: Path, system: str, metric: str, values: np.ndarray) -> None:
    frame = _read_metrics(results, system)
    frame[metric] = values
    frame.to_csv(_metrics_file(results, system), sep="\t", index=False, na_rep="nan")


def _step_table(config: Path, results: Path) -> tuple[list, steps.StepTable]:
    res = load_results(results, load_config(config))
    rows = headline(res)
    return rows, steps.step_table(res, rows)


def test_steps_against_scipy_with_and_without_an_effect(tmp_path):
    """abl1 = bsrnn + 0.8 dB + N(0, 1): detected. optimized_as_coded = optimized + N(0, 1):
    not detected, and the detectable size is the analytic one for sd 1 and n 40."""
    n = 40
    config, results = make_results_tree(tmp_path, n_test=n, ablations=(
        "bsrnn", "abl1", "optimized", "optimized_as_coded"))    # optimized: no parent here
    rng = np.random.default_rng(3)
    bsrnn = _read_metrics(results, "bsrnn")["si_sdr"].to_numpy()
    optimized = _read_metrics(results, "optimized")["si_sdr"].to_numpy()
    _set_metric(results, "abl1", "si_sdr", bsrnn + 0.8 + rng.normal(0.0, 1.0, n))
    _set_metric(results, "optimized_as_coded", "si_sdr", optimized + rng.normal(0.0, 1.0, n))
    _, table = _step_table(config, results)
    assert [(s.parent, s.child) for s in table.steps] == [
        ("bsrnn", "abl1"), ("bsrnn", "optimized"), ("optimized", "optimized_as_coded")]
    cells = [s.metrics[m] for s in table.steps for m in METRIC_SPECS]
    assert table.tests == 24                                       # 3 steps x 8 metrics
    assert [c.p_holm for c in cells] == pytest.approx(stats.holm([c.utterances.p
                                                                  for c in cells]))
    t_sum = scipy_stats.t.ppf(1 - 0.05 / (2 * 24), n - 1) + scipy_stats.t.ppf(0.8, n - 1)
    for step, detected in ((table.steps[0], True), (table.steps[2], False)):
        diff = (_read_metrics(results, step.child)["si_sdr"]
                - _read_metrics(results, step.parent)["si_sdr"]).to_numpy()
        cell = step.metrics["si_sdr"]
        assert cell.utterances.n == n
        assert cell.utterances.mean_diff == pytest.approx(diff.mean(), rel=1e-9)
        assert cell.utterances.ci95 == pytest.approx(
            scipy_stats.t.ppf(0.975, n - 1) * diff.std(ddof=1) / math.sqrt(n), rel=1e-9)
        assert cell.utterances.p == pytest.approx(scipy_stats.wilcoxon(diff).pvalue, rel=1e-9)
        assert cell.significant is detected
        assert cell.detectable == pytest.approx(
            t_sum * diff.std(ddof=1) / math.sqrt(n * 3 / math.pi), rel=1e-9)
    found, nothing = table.steps[0].metrics["si_sdr"], table.steps[2].metrics["si_sdr"]
    assert found.utterances.mean_diff == pytest.approx(0.8, abs=0.35)
    assert nothing.detectable == pytest.approx(t_sum / math.sqrt(n * 3 / math.pi), rel=0.15)
    cell = step_views.metric_cell("si_sdr", nothing)
    assert cell.cls == ""
    assert cell.sub[-1] == (
        f"no difference detected; the test set can detect ≥ {nothing.detectable:.2f} dB")
    assert step_views.metric_cell("si_sdr", found).cls == "gain"
    detect = steps.detectable_table(table)["si_sdr"]
    sds = sorted(s.metrics["si_sdr"].utterances.sd for s in table.steps)
    assert (detect.pairs, detect.sd) == (n, pytest.approx(sds[1]))       # the median
    assert detect.corrected == pytest.approx(stats.detectable_difference(sds[1], n, 24))
    assert detect.pairs_needed == stats.pairs_needed(sds[1], 0.5, 24)


def test_without_parents_every_ablation_steps_from_the_baseline(tmp_path):
    config, results = make_results_tree(tmp_path, ablations=("bsrnn", "abl1", "abl2"),
                                        lineage=False)
    _, table = _step_table(config, results)
    assert [(s.parent, s.child) for s in table.steps] == [("bsrnn", "abl1"), ("bsrnn", "abl2")]
    against_baseline = significance(load_results(results, load_config(config)))
    assert [r.result.p for r in against_baseline] == [
        table.steps[i].metrics[m].utterances.p for i in (0, 1) for m in ("pesq_wb", "si_sdr")]
    assert all(math.isfinite(r.detectable) for r in against_baseline)
    assert against_baseline[0].detectable == pytest.approx(against_baseline[0].result.detectable(4))


def test_one_ablation_has_no_steps(tmp_path):
    config, results = make_results_tree(tmp_path, ablations=("bsrnn",))
    rows, table = _step_table(config, results)
    assert isinstance(table, Missing)
    assert "no ablation has a parent" in table.reason
    assert "## What each change buys\n\nmissing: no ablation has a parent" in \
        summary_markdown(rows, table, {})


def test_several_seeds_are_paired_over_seeds_too(tmp_path):
    config, results = make_results_tree(tmp_path, seeds=(0, 1, 2), ablations=("bsrnn", "abl1"))
    rows, table = _step_table(config, results)
    cell = table.steps[0].metrics["stoi"]
    per_seed = [(_read_metrics(results, "abl1", s)["stoi"]
                 - _read_metrics(results, "bsrnn", s)["stoi"]).mean() for s in (0, 1, 2)]
    assert cell.seeds.n == 3
    assert cell.seeds.mean_diff == pytest.approx(np.mean(per_seed))
    assert cell.seeds.ci95 == pytest.approx(stats.mean_ci(per_seed).ci95)
    assert cell.seeds.note == "too few paired seeds for a conclusion (3 < 10)"
    assert math.isnan(cell.seeds_p_holm)
    assert step_views.metric_cell("stoi", cell).sub[-1] == (
        f"over 3 seeds: {cell.seeds.mean_diff:+.3f} ± {cell.seeds.ci95:.3f}")
    frame = summary_frame(rows, table).set_index("system")
    assert frame.loc["abl1", "step_stoi_seeds"] == pytest.approx(np.mean(per_seed))
    assert frame.loc["abl1", "parent"] == "bsrnn"
    assert frame.loc["bsrnn", "parent"] == ""
    assert math.isnan(frame.loc["bsrnn", "step_stoi"])


def test_step_table_in_the_report(report):
    html = report.read_text()
    tables = _tables(html)
    rows = {r[0]: r[1:] for r in tables["steps-table"]}
    assert list(rows) == ["bsrnn → abl1", "abl1 → abl2", "abl2 → abl3", "abl2 → optimized"]
    assert rows["abl1 → abl2"][0] == ("stages[0].blocks[1]: added mamba band (bidirectional, "
                                      "d_state 4)")
    assert rows["abl2 → abl3"][0] == "decoder: uniform → adaptive"
    assert rows["bsrnn → abl1"][0].startswith("channels: 8 → 16")
    params = 1 + len(METRIC_SPECS)
    assert rows["bsrnn → abl1"][params] == "+200.00 k×1.08"
    assert rows["abl1 → abl2"][params] == "-20.00 k×0.99"      # abl2's from train_summary.json
    assert rows["abl1 → abl2"][params + 1] == "missing: abl2: not profiled"
    assert rows["abl2 → abl3"][1] == "missing: abl3: training did not finish"   # 8 columns
    assert '<td class="missing" colspan="8" title="abl3: training did not finish (' in html
    assert rows["abl2 → optimized"][1] == "missing: optimized: not run"
    assert rows["bsrnn → abl1"][1].startswith("+0.")                # PESQ, significant
    assert '<td class="gain" title="n = 11 paired utterances' in html
    assert "<b>bsrnn → abl1 → abl2 → abl3</b>; <b>bsrnn → abl1 → abl2 → optimized</b>" in html
    assert [r[0] for r in tables["detectable-table"]] == [
        spec.label for spec in METRIC_SPECS.values()]
    md = (report.parent / "summary.md").read_text()
    assert "\n## What each change buys\n" in md
    assert "\n## What the test set can detect\n" in md
    assert "| abl1 → abl2 | stages[0].blocks[1]: added mamba band (bidirectional, d_state 4) |" \
        in md
    tsv = pd.read_csv(report.parent / "summary.tsv", sep="\t").set_index("system")
    assert tsv.loc["abl1", "parent"] == "bsrnn"
    assert tsv.loc["abl1", "step_params"] == 200_000
    assert tsv.loc["abl3", "step_missing"].startswith(
        "pesq_wb,csig,cbak,covl,ssnr,stoi,estoi,si_sdr: abl3: training did not finish")


def test_several_seeds_show_the_spread(tmp_path):
    config, results = make_results_tree(tmp_path, seeds=(0, 1), ablations=("bsrnn", "abl1"))
    rows = headline(load_results(results, load_config(config)))
    per_seed = [pd.read_csv(results / "bsrnn" / f"seed{s}" / "eval" / "metrics.tsv",
                            sep="\t")["stoi"].mean() for s in (0, 1)]
    est = rows[1].metrics["stoi"]
    assert est.seeds == 2
    assert est.mean == pytest.approx(np.mean(per_seed))
    assert est.seed_sd == pytest.approx(np.std(per_seed, ddof=1))
    assert rows[1].costs["train_wall_seconds"] == 3775.0            # mean of 3725 and 3825
    cells = render.headline_cells(rows[1])
    assert cells[5].text == f"{est.mean:.3f}"
    assert cells[5].sub[1] == f"sd {est.seed_sd:.3f}"
    tsv = summary_frame(rows).set_index("system")
    assert tsv.loc["bsrnn", "stoi_seed_sd"] == pytest.approx(est.seed_sd)


def _wav_samples(path: Path) -> np.ndarray:
    wave, rate = sf.read(path, dtype="float32")
    assert rate == 16000
    return wave


def test_example_is_complete_without_saved_wavs(tmp_path):
    """The default run (evaluation.save_wavs false): every ablation's example from
    eval/example/, which every evaluation writes."""
    config, results = make_results_tree(tmp_path, ablations=("bsrnn", "abl1"), seeds=(0, 1))
    assert load_config(config)["evaluation"]["save_wavs"] is False
    example = example_audio(load_results(results, load_config(config)))
    assert example.utt_id == "test_002"                           # the first test utterance
    assert list(example.signals) == ["clean", "noisy", "bsrnn", "abl1"]
    assert example.signals["clean"].shape == (6400,)
    for name in ("bsrnn", "abl1"):                                # seed 0's file
        np.testing.assert_array_equal(example.signals[name], _wav_samples(
            results / name / "seed0" / "eval" / "example" / "test_002.wav"))


def test_example_from_an_older_tree(tmp_path):
    """Evaluated before eval/example/ existed: eval/wavs/ where it was saved, else a missing
    player that names the file and how to get it."""
    config, results = make_results_tree(tmp_path / "wavs", ablations=("bsrnn",),
                                        examples=False, save_wavs=True)
    example = example_audio(load_results(results, load_config(config)))
    np.testing.assert_array_equal(example.signals["bsrnn"], _wav_samples(
        results / "bsrnn" / "seed0" / "eval" / "wavs" / "test_002.wav"))

    config, results = make_results_tree(tmp_path / "none", ablations=("bsrnn",),
                                        examples=False)
    log = results / "logs" / "evaluate" / "bsrnn_seed0.log"
    log.parent.mkdir(parents=True)
    log.write_text("bsrnn: 12 utterances on cpu\n")
    example = example_audio(load_results(results, load_config(config)))
    missing = example.signals["bsrnn"]
    assert str(missing) == "missing: no bsrnn/seed0/eval/example/test_002.wav"
    assert missing.full == ("no bsrnn/seed0/eval/example/test_002.wav (mbsnet evaluate writes "
                            "it (--example test_002); rerun the evaluation; see "
                            'logs/evaluate/bsrnn_seed0.log: "bsrnn: 12 utterances on cpu")')
    assert isinstance(example.signals["noisy"], np.ndarray)


def test_configured_example_utterance(tmp_path):
    config, results = make_results_tree(tmp_path, ablations=("bsrnn",), save_wavs=True)
    cfg = load_config(config)
    cfg["report"]["example_utterance"] = "test_003"
    example = example_audio(load_results(results, cfg))
    assert example.utt_id == "test_003"
    np.testing.assert_array_equal(example.signals["bsrnn"], _wav_samples(   # not in example/
        results / "bsrnn" / "seed0" / "eval" / "wavs" / "test_003.wav"))
    for bad in ("train_000", "nope"):
        cfg["report"]["example_utterance"] = bad
        example = example_audio(load_results(results, cfg))
        assert str(example.utt_id) == (f"missing: report.example_utterance '{bad}' is not a "
                                       "test utterance in data/manifest.tsv (e.g. 'test_002')")
        assert example.signals == {}


class _Identity(torch.nn.Module):
    """Stand-in model: gives back the noisy spectrogram."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(()))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return spec * self.gain


def test_evaluate_keeps_the_example_the_report_shows(tmp_path):
    """`mbsnet evaluate` and the report choose the example with one function: what one
    writes, the other shows, configured or not."""
    config, results = make_results_tree(tmp_path, ablations=("bsrnn",), examples=False)
    cfg = load_config(config)
    eval_dir = results / "bsrnn" / "seed0" / "eval"
    for wanted in (None, "test_005"):
        cfg["report"]["example_utterance"] = wanted
        evaluate(results / "data" / "manifest.tsv", eval_dir, model=_Identity(), system="bsrnn",
                 examples=None if wanted is None else [wanted], progress=False)
        example = example_audio(load_results(results, cfg))
        expected = "test_002" if wanted is None else wanted
        assert example.utt_id == expected
        assert sorted(p.name for p in (eval_dir / "example").iterdir()) == [f"{expected}.wav"]
        # the identity model's output: the noisy input, to PCM-16 precision
        np.testing.assert_allclose(example.signals["bsrnn"], example.signals["noisy"],
                                   atol=3 / 32768)


def test_every_example_signal_has_a_player_and_a_spectrogram(tmp_path, monkeypatch):
    config, results = make_results_tree(tmp_path, ablations=("bsrnn", "abl1", "abl2"),
                                        never_run=("abl2",))
    drawn = []
    monkeypatch.setattr(render.figures, "figure_uri",
                        lambda fig, fmt="svg": drawn.append(fig) or "data:,")
    context = render._example_context(load_results(results, load_config(config)))
    assert [(p["label"], p["uri"].startswith("data:audio/wav;base64,"), p["missing"])
            for p in context["players"]] == [
        ("clean", True, ""), ("noisy", True, ""), ("bsrnn", True, ""), ("abl1", True, ""),
        ("abl2", False, "missing: abl2 was not scored")]
    (fig,) = drawn
    panels = [ax.get_title(loc="left") for ax in fig.axes if ax.get_title(loc="left")]
    assert panels == ["clean", "noisy", "bsrnn", "abl1"]
    assert context["figure"]["caption"].startswith("Log-magnitude spectrograms")


def test_noise_table_and_training_curves(tmp_path):
    config, results = make_results_tree(tmp_path, ablations=("bsrnn", "abl1"))
    res = load_results(results, load_config(config))
    table = noise_table(res, "pesq_wb")
    metrics = pd.read_csv(results / "bsrnn" / "seed0" / "eval" / "metrics.tsv", sep="\t")
    assert list(table.columns) == ["n", "noisy", "bsrnn", "abl1"]
    assert table.loc["car", "n"] == 4
    assert table.loc["car", "bsrnn"] == pytest.approx(
        metrics.loc[metrics["noise"] == "car", "pesq_wb"].mean())
    curves = training_curves(res)
    assert list(curves) == ["bsrnn", "abl1"]
    assert list(curves["abl1"][0]["epoch"]) == [1, 2, 3]


def test_bad_inputs_are_user_errors(tmp_path, capsys):
    config, results = make_results_tree(tmp_path, ablations=("bsrnn",))
    assert main(["report", "--config", str(config), "--results", str(tmp_path / "nope")]) == 1
    assert "results directory" in capsys.readouterr().err
    assert main(["report", "--config", str(tmp_path / "missing.yaml"),
                 "--results", str(results)]) == 1


def test_failure_leaves_previous_report_untouched(tmp_path, monkeypatch):
    config, results = make_results_tree(tmp_path, ablations=("bsrnn",))
    out = results / "report.html"
    out.write_text("previous")

    def boom(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(render.figures, "training_curves", boom)
    with pytest.raises(RuntimeError):
        render.write_report(load_config(config), results, out)
    assert out.read_text() == "previous"
    assert not (results / "summary.tsv").exists()
    assert not [p for p in results.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- headless Chromium


def _above_4(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fds 3 and 4)."""

    def __init__(self, user_data_dir: Path, timeout: float = 25.0):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the shell sets the child's fds 3 and 4: keep ours clear of them
        to_browser_r, from_browser_w = _above_4(to_browser_r), _above_4(from_browser_w)
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--remote-debugging-pipe", f"--user-data-dir={user_data_dir}",
                 "--window-size=1280,2000", "about:blank"]
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec 3<&{to_browser_r} 4>&{from_browser_w}; exec "$0" "$@"',
             CHROMIUM, *flags],
            pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.deadline = time.monotonic() + timeout
        self.events: list[dict] = []
        self._buffer = b""
        self._next_id = 0

    def _read_message(self) -> dict:
        while b"\0" not in self._buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise EOFError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read_message()
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


#: what the browser test reads from the page: name -> JavaScript expression
PROBES = {
    "headline": "document.querySelectorAll('#headline tbody tr').length",
    "steps": "document.querySelectorAll('#steps-table tbody tr').length",
    "detectable": "document.querySelectorAll('#detectable-table tbody tr').length",
    # a decoded image has a size: the step figure's data URI is a valid SVG
    "steps_figure": "(document.querySelector('#steps-figure img') || {}).naturalWidth || 0",
}


def load_in_chromium(page: Path, tmp_path: Path,
                     screenshot: Path) -> tuple[dict[str, Any], list[str]]:
    """Open ``page``; return (the values of PROBES, problems) and save a screenshot.

    Problems: uncaught exceptions, console errors and warnings, browser log errors (e.g.
    failed loads) and any request that is not to a file: or data: URL (network access)."""
    browser = DevTools(tmp_path / "chromium-profile")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget",
                               {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": 1280, "height": 2000, "deviceScaleFactor": 1, "mobile": False},
                     session=session)
        browser.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        values = {name: browser.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True}, session=session)["result"]["value"]
            for name, expression in PROBES.items()}
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        problems = []
        for event in browser.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                problems.append(f"{details.get('text')}: "
                                f"{details.get('exception', {}).get('description', '')}")
            elif (method == "Runtime.consoleAPICalled"
                  and params.get("type") in ("error", "warning", "assert")):
                problems.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                problems.append(f"log: {params['entry'].get('text')}")
            elif method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                if not url.startswith(("file:", "data:", "about:")):
                    problems.append(f"network request: {url}")
        return values, problems
    finally:
        browser.close()


@pytest.fixture
def chromium():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package "
                    "(apt-get install -y chromium) to run the browser test")
    return CHROMIUM


@pytest.mark.timeout(60)
def test_page_in_headless_chromium(report, tmp_path, chromium):
    screenshot = tmp_path / "report.png"
    values, problems = load_in_chromium(report, tmp_path, screenshot)
    assert problems == []
    assert values["headline"] == len(ALL) + 1
    assert values["steps"] == 4
    assert values["detectable"] == len(METRIC_SPECS)
    assert values["steps_figure"] > 500
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000
    keep = os.environ.get("MBSNET_REPORT_SCREENSHOT")   # to look at it: a path to copy it to
    if keep:
        shutil.copy(screenshot, keep)


@pytest.mark.timeout(60)
def test_chromium_check_catches_errors_and_network(tmp_path, chromium):
    """The browser check itself: a page with a script error and an external load fails it."""
    page = tmp_path / "bad.html"
    page.write_text('<table id="headline"><tbody><tr><td>x</td></tr></tbody></table>'
                    '<img src="http://127.0.0.1:9/x.png">'
                    '<script>console.error("boom"); throw new Error("kaboom")</script>')
    values, problems = load_in_chromium(page, tmp_path, tmp_path / "bad.png")
    assert values["headline"] == 1
    assert values["steps"] == 0
    assert values["steps_figure"] == 0
    assert any("kaboom" in p for p in problems)
    assert any(p.startswith("console.error") for p in problems)
    assert any("127.0.0.1:9" in p for p in problems)


def test_ablation_without_a_claim_has_empty_claim_cells(tmp_path):
    config_path, results = make_results_tree(tmp_path, ablations=("bsrnn", "abl1"))
    config = yaml.safe_load(config_path.read_text())
    config["ablations"]["abl1"]["claimed_params"] = None
    config_path.write_text(yaml.safe_dump(config))
    res = load_results(results, load_config(config_path))
    rows = {row.system: row for row in headline(res)}
    assert rows["abl1"].costs["claimed_params"] is None
    assert rows["abl1"].costs["params_ratio"] is None
    assert rows["bsrnn"].costs["params_ratio"] == pytest.approx(2_410_000 / 2_400_000)


def test_health_lists_metrics_not_better_than_the_noisy_input(tmp_path):
    from mbsnet.report.health import health
    from mbsnet.report.loading import Results, Run, System

    def scores(**means):
        frame = pd.DataFrame({spec.name: [1.0, 1.0] for spec in METRIC_SPECS.values()})
        for name, value in means.items():
            frame[name] = [value - 0.5, value + 0.5]
        frame["utt_id"] = ["a", "b"]
        frame["error"] = ""
        return frame

    manifest = pd.DataFrame({"utt_id": ["a", "b"], "split": ["test", "test"]})
    systems = {name: System(name, [Run(name, seed, tmp_path, frame)]) for name, seed, frame in (
        ("noisy", None, scores(pesq_wb=1.3, si_sdr=7.56)),
        ("good", 0, scores(pesq_wb=1.8, si_sdr=10.0, csig=2.0, cbak=2.0, covl=2.0, ssnr=2.0,
                           stoi=2.0, estoi=2.0)),
        ("as_coded", 0, scores(pesq_wb=1.5, si_sdr=6.19, csig=2.0, cbak=2.0, covl=2.0,
                               ssnr=2.0, stoi=2.0, estoi=2.0)))}
    found = health(Results(tmp_path, {}, manifest, systems)).not_better
    assert found == [{"system": "as_coded", "seed": 0, "metrics": "SI-SDR 6.19 dB (noisy 7.56 dB)"}]
