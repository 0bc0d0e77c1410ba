"""Metrics against the reference values of tests/data/metrics, and where the reference breaks."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mbsnet.cli import main
from mbsnet.errors import DataError
from mbsnet.metrics import (
    METRICS,
    composite_scores,
    pesq_wb,
    pesq_wb_checked,
    score_many,
    score_pair,
    segmental_snr,
    si_sdr,
    stoi,
)
from mbsnet.metrics.composite import llr_frames, num_frames, wss_frames
from mbsnet.metrics.score import _score_parallel
from mbsnet.metrics.standard import pesq_segments

from . import scoring_crash
from .helpers import ROOT

FIXTURES = ROOT / "tests" / "data" / "metrics"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
NAMES = sorted(EXPECTED)


def pair_paths(name: str) -> tuple[Path, Path]:
    return FIXTURES / f"{name}_clean.wav", FIXTURES / f"{name}_degraded.wav"


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    clean, degraded = pair_paths(name)
    return sf.read(clean, dtype="float64")[0], sf.read(degraded, dtype="float64")[0]


def assert_same_scores(row: dict, other: dict) -> None:
    """Equal up to summation-order rounding (numpy's sums depend on memory alignment)."""
    assert row["error"] == other["error"]
    for metric in METRICS:
        assert row[metric] == pytest.approx(other[metric], rel=1e-12, abs=0), metric


@pytest.fixture(scope="module")
def serial_scores() -> dict[str, dict]:
    return dict(zip(NAMES, score_many([pair_paths(n) for n in NAMES], workers=1,
                                      progress=False), strict=True))


def test_fixture_keys_are_the_metrics():
    for values in EXPECTED.values():
        assert tuple(values) == METRICS


@pytest.mark.parametrize("name", NAMES)
def test_fixtures_reproduced_to_1e_3(serial_scores, name):
    row = serial_scores[name]
    assert row["error"] == ""
    for metric, expected in EXPECTED[name].items():
        assert row[metric] == pytest.approx(expected, abs=1e-3), metric


def test_arrays_and_paths_give_the_same_scores(serial_scores):
    clean, degraded = load(NAMES[0])
    assert_same_scores(score_pair(clean, degraded), serial_scores[NAMES[0]])


def test_parallel_equals_serial(serial_scores):
    pairs = [pair_paths(n) for n in NAMES]
    parallel = score_many(pairs, workers=2, progress=False)
    for name, row in zip(NAMES, parallel, strict=True):
        assert_same_scores(row, serial_scores[name])


def test_silent_padding_gives_finite_composites():
    clean, degraded = load(NAMES[0])
    silence = np.zeros(8000)  # 0.5 s of digital zeros in both signals
    clean, degraded = np.r_[silence, clean], np.r_[silence, degraded]
    row = score_pair(clean, degraded)
    assert row["error"] == ""
    assert all(math.isfinite(row[m]) for m in METRICS)
    assert 1.0 < row["csig"] < 5.0
    assert 1.0 < row["covl"] < 5.0
    llr = llr_frames(clean, degraded, 16000)
    assert np.all(np.isfinite(llr))
    assert np.all(llr[:60] == 0.0)  # frames silent in both signals match perfectly


def test_llr_finite_when_only_one_signal_is_silent():
    rng = np.random.default_rng(1)
    noise = 0.1 * rng.standard_normal(4000)
    for clean, processed in ((np.zeros(4000), noise), (noise, np.zeros(4000))):
        llr = llr_frames(clean, processed, 16000)
        assert llr.size == num_frames(4000, 16000)
        assert np.all(np.isfinite(llr))
        assert np.all(llr >= 0)


def test_identical_signals():
    clean, _ = load(NAMES[1])
    assert np.allclose(llr_frames(clean, clean, 16000), 0.0, atol=1e-9)
    assert np.allclose(wss_frames(clean, clean, 16000), 0.0)
    assert segmental_snr(clean, clean) == 35.0  # clipped at the top
    assert si_sdr(clean, clean) > 100.0


def test_pesq_failure_gives_a_nan_row_with_the_reason():
    rng = np.random.default_rng(0)
    short = 0.1 * rng.standard_normal(1600)  # 0.1 s: PESQ's BufferTooShortError
    rows = score_many([(np.zeros(32000), np.zeros(32000)), (short, short.copy())],
                      progress=False)
    assert len(rows) == 2
    silent, too_short = rows
    assert "pesq_wb: No utterances detected" in silent["error"]
    assert "pesq_wb: Buffer needs to be at least 1/4 of a second long" in too_short["error"]
    for row in rows:
        assert all(math.isnan(row[m]) for m in ("pesq_wb", "csig", "cbak", "covl"))
        assert math.isfinite(row["ssnr"])
    assert too_short["si_sdr"] > 100.0


def test_pesq_wb_variants():
    clean, degraded = load(NAMES[0])
    assert pesq_wb(clean, degraded) == EXPECTED[NAMES[0]]["pesq_wb"]
    rng = np.random.default_rng(0)
    ref = 0.1 * rng.standard_normal(32000)
    value, reason = pesq_wb_checked(np.zeros(32000), ref)
    assert math.isnan(value)
    assert reason == "No utterances detected"
    assert math.isnan(pesq_wb(ref[:1000], ref[:1000]))
    value, reason = pesq_wb_checked(ref, np.zeros(32000))  # crashed the package's C code
    assert math.isnan(value)
    assert reason.startswith("No utterances detected")


def test_stoi_too_short_is_an_error_not_a_silent_fallback():
    rng = np.random.default_rng(0)
    x = 0.1 * rng.standard_normal(2000)
    with pytest.raises(Exception, match="too short for STOI"):
        stoi(x, x)
    row = score_pair(x, x)
    assert math.isnan(row["stoi"])
    assert math.isnan(row["estoi"])
    assert "stoi: too short" in row["error"]
    assert "estoi: too short" in row["error"]


def test_si_sdr_definition():
    t = np.arange(16000) / 16000
    s = np.sin(2 * np.pi * 100 * t)
    e = np.cos(2 * np.pi * 100 * t) * math.sqrt(0.1)  # orthogonal, 10 dB below
    assert si_sdr(s, s + e) == pytest.approx(10.0, abs=1e-9)
    assert si_sdr(s, 3.0 * (s + e) + 0.5) == pytest.approx(10.0, abs=1e-9)  # scale, offset


def test_composite_without_pesq_is_nan_but_keeps_ssnr():
    clean, degraded = load(NAMES[2])
    out = composite_scores(clean, degraded, math.nan)
    assert all(math.isnan(out[k]) for k in ("csig", "cbak", "covl"))
    assert out["ssnr"] == pytest.approx(EXPECTED[NAMES[2]]["ssnr"], abs=1e-9)
    with pytest.raises(ValueError, match="differ in length"):
        composite_scores(clean, degraded[:-1], 2.0)


def test_different_lengths_are_an_error_unless_trimmed():
    clean, degraded = load(NAMES[0])
    longer = np.r_[degraded, np.zeros(100)]
    with pytest.raises(DataError, match=f"lengths differ: clean signal has {clean.size} "
                       f"samples, degraded signal {clean.size + 100}; .*--trim"):
        score_pair(clean, longer)
    row = score_pair(clean, longer, trim=True)
    assert row["pesq_wb"] == pytest.approx(EXPECTED[NAMES[0]]["pesq_wb"], abs=1e-6)
    failed, = score_many([(clean, longer)], progress=False)
    assert all(math.isnan(failed[m]) for m in METRICS)
    assert failed["error"].startswith("lengths differ")


def test_cli_score_length_mismatch_and_trim(tmp_path, capsys):
    clean, degraded = pair_paths(NAMES[0])
    samples, rate = sf.read(degraded, dtype="float64")
    longer = tmp_path / "longer.wav"
    sf.write(longer, np.r_[samples, np.zeros(100)], rate, subtype="PCM_16")
    assert main(["score", str(clean), str(longer)]) == 1
    assert "lengths differ" in capsys.readouterr().err
    assert main(["score", str(clean), str(longer), "--json", "--trim"]) == 0
    values = json.loads(capsys.readouterr().out)
    assert values["note"] == (f"scored the first {samples.size} samples only: {clean} has "
                              f"{samples.size}, {longer} {samples.size + 100}")
    assert values["pesq_wb"] == pytest.approx(EXPECTED[NAMES[0]]["pesq_wb"], abs=1e-3)


def test_non_finite_samples_are_an_error_naming_the_sample(tmp_path, capsys):
    clean, degraded = load(NAMES[0])
    poisoned = degraded.copy()
    poisoned[[500, 700]] = [np.nan, np.inf]
    with pytest.raises(DataError, match=r"degraded signal: sample 500 is nan \(2 non-finite"):
        score_pair(clean, poisoned)
    row, = score_many([(clean, poisoned)], progress=False)
    assert all(math.isnan(row[m]) for m in METRICS)
    assert "sample 500 is nan" in row["error"]
    path = tmp_path / "nan.wav"
    sf.write(path, poisoned, 16000, subtype="FLOAT")
    assert main(["score", str(pair_paths(NAMES[0])[0]), str(path)]) == 1
    assert f"{path}: sample 500 is nan (2 non-finite samples)" in capsys.readouterr().err


@pytest.mark.parametrize("level", [0.0, 0.25])
def test_silent_or_constant_degraded_gives_nan_with_reasons(level):
    clean, _ = load(NAMES[0])
    row = score_pair(clean, np.full_like(clean, level))
    state = "digitally silent" if level == 0.0 else "constant"
    for metric, label in (("stoi", "STOI"), ("estoi", "ESTOI"), ("si_sdr", "SI-SDR")):
        assert math.isnan(row[metric])
        assert f"{metric}: {label} undefined: the degraded signal is {state}" in row["error"]
    assert math.isnan(row["pesq_wb"])
    assert f"pesq_wb: No utterances detected (the degraded signal is {state})" in row["error"]
    assert math.isfinite(row["ssnr"])  # frame SNRs of a silent estimate are defined


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """A 1 s burst of voiced noise every 2 s: one PESQ utterance per burst, so the count
    of utterances is known (tests/corpus.py's speechlike never pauses: one utterance)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    on = (t % 2.0) < 1.0
    return on * (0.3 * np.sin(2 * np.pi * 200 * t) + 0.06 * rng.standard_normal(t.size))


def long_pair(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    clean = speech_like(seconds)
    return clean, clean + 0.01 * np.random.default_rng(1).standard_normal(clean.size)


def test_a_200_s_pair_is_scored_segment_by_segment():
    """100 utterances: the pesq package's C code segfaults beyond 50 of them."""
    clean, degraded = long_pair(200)
    row, = score_many([(clean, degraded)], workers=1, progress=False)
    assert row["error"] == ""
    assert all(math.isfinite(row[m]) for m in METRICS)
    segments = pesq_segments(clean.size)
    assert len(segments) == 7
    expected = np.average([pesq_wb(clean[s], degraded[s]) for s in segments],
                          weights=[s.stop - s.start for s in segments])
    assert row["pesq_wb"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
def test_a_ten_minute_pair_is_scored_in_a_worker():
    clean, degraded = long_pair(600)
    row, = score_many([(clean, degraded)], workers=2, progress=False)
    assert row["error"] == ""
    assert all(math.isfinite(row[m]) for m in METRICS)


def test_pesq_segments_cover_the_signal_in_equal_parts():
    parts = pesq_segments(int(61 * 16000))
    assert [(p.start, p.stop) for p in parts] == [(0, 325333), (325333, 650667),
                                                  (650667, 976000)]
    assert pesq_segments(100) == [slice(0, 100)]


def test_a_dying_worker_costs_only_its_row(serial_scores):
    clean, degraded = load(NAMES[0])
    crashing = degraded.copy()
    crashing[0] = scoring_crash.MARKER
    pairs = [pair_paths(NAMES[0]), (clean, crashing), pair_paths(NAMES[1]),
             pair_paths(NAMES[2])]
    rows = list(_score_parallel(pairs, 2, 16000, scoring_crash.score_or_crash))
    assert len(rows) == 4
    assert all(math.isnan(rows[1][m]) for m in METRICS)
    assert rows[1]["error"] == "the scoring process died (signal SIGSEGV) on an array"
    for row, name in zip((rows[0], rows[2], rows[3]), NAMES[:3], strict=True):
        assert_same_scores(row, serial_scores[name])


def test_cli_score_json(capsys):
    clean, degraded = pair_paths(NAMES[0])
    assert main(["score", str(clean), str(degraded), "--json"]) == 0
    values = json.loads(capsys.readouterr().out)
    assert tuple(values) == METRICS
    for metric in METRICS:
        assert values[metric] == pytest.approx(EXPECTED[NAMES[0]][metric], abs=1e-3)


def test_cli_score_unreadable_file(tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    clean, _ = pair_paths(NAMES[0])
    assert main(["score", str(clean), str(bad)]) == 1
    assert str(bad) in capsys.readouterr().err


def test_metrics_package_does_not_import_torch():
    code = "import sys, mbsnet.metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
