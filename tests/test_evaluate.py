"""Whole-utterance enhancement, `mbsnet evaluate` outputs and `mbsnet enhance` files."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from torch import nn

from mbsnet.audio import HOP
from mbsnet.cli import main
from mbsnet.data.manifest import example_utterance, read_manifest
from mbsnet.errors import DataError
from mbsnet.evaluation.enhance import enhance_files, enhance_waveform
from mbsnet.evaluation.evaluate import COLUMNS, evaluate, summarise
from mbsnet.metrics import METRICS
from mbsnet.wavio import read_16k_mono

from .corpus import Utterance, speechlike, write_corpus

SR = 16000


class Identity(nn.Module):
    """Stand-in model: complex [B, 257, T] -> the same spectrogram."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        assert spec.is_complex()
        assert spec.dim() == 3
        assert spec.shape[1] == 257
        return spec * self.gain


class Halve(nn.Module):
    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return spec * 0.5


@pytest.mark.parametrize("shape", [(16003,), (2, 8000), (HOP - 28,)])
def test_identity_model_gives_back_the_input(shape):
    wave = 0.1 * torch.randn(*shape)
    out = enhance_waveform(Identity(), wave)
    assert out.shape == wave.shape
    assert out.dtype == torch.float32
    assert torch.allclose(out, wave, atol=1e-5)


def test_enhance_waveform_applies_the_model_without_gradients():
    wave = 0.1 * torch.randn(1, 4000)
    model = Identity()
    out = enhance_waveform(model, wave)
    assert not out.requires_grad
    assert torch.allclose(enhance_waveform(Halve(), wave), 0.5 * wave, atol=1e-5)


# ---------------------------------------------------------------------------- evaluate

SILENT = "t4_silent"
"""The test utterance that is digitally silent: PESQ finds no speech in it."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """A 4-utterance test split (the last one digitally silent) and a training utterance."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    specs = [("t1", "test", 0.0), ("t2", "test", 5.0), ("t3", "test", 5.0),
             (SILENT, "test", 0.0), ("tr1", "train", 5.0)]
    utterances = []
    for index, (utt, split, snr) in enumerate(specs):
        if utt == SILENT:
            clean = noisy = np.zeros(SR)
        else:
            clean = speechlike(1.2, 120 + 20 * index, index)
            noise = rng.standard_normal(clean.size)
            noisy = clean + noise * np.sqrt(np.mean(clean ** 2) / np.mean(noise ** 2)
                                            / 10 ** (snr / 10))
        utterances.append(Utterance(utt, split, clean, noisy, snr=snr))
    return {"manifest": write_corpus(root, utterances), "root": root}


@pytest.fixture(scope="module")
def noisy_eval(corpus, tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("noisy") / "eval"
    summary = evaluate(corpus["manifest"], out, workers=1, progress=False)
    return out, summary


def test_noisy_evaluation_writes_one_row_per_test_utterance(noisy_eval):
    out, summary = noisy_eval
    table = pd.read_csv(out / "metrics.tsv", sep="\t", keep_default_na=False,
                        na_values=["NaN"])
    assert tuple(table.columns) == COLUMNS
    assert table["utt_id"].tolist() == ["t1", "t2", "t3", SILENT]
    assert set(table["system"]) == {"noisy"}
    assert table["snr"].tolist() == [0.0, 5.0, 5.0, 0.0]
    ok = table[table["utt_id"] != SILENT]
    assert (ok["error"] == "").all()
    assert np.isfinite(ok[list(METRICS)].to_numpy()).all()
    silent = table[table["utt_id"] == SILENT].iloc[0]
    assert math.isnan(silent["pesq_wb"])
    assert "No utterances detected" in silent["error"]
    assert json.loads((out / "summary.json").read_text()) == summary


def test_summary_statistics(noisy_eval):
    out, summary = noisy_eval
    table = pd.read_csv(out / "metrics.tsv", sep="\t", keep_default_na=False, na_values=["NaN"])
    assert summary["system"] == "noisy"
    assert summary["n"] == 4
    assert summary["device"] is None                  # no model ran
    assert summary["failed"]["pesq_wb"] == 1
    assert summary["failed"]["csig"] == 1
    pesq = table["pesq_wb"].dropna()
    overall = summary["overall"]["pesq_wb"]
    assert overall["n"] == 3
    assert overall["mean"] == pytest.approx(pesq.mean())
    assert overall["std"] == pytest.approx(pesq.std(ddof=1))
    assert overall["ci95"] == pytest.approx(4.302652729911275 * pesq.std(ddof=1) / math.sqrt(3))
    assert set(summary["by_snr"]) == {"0", "5"}
    five = summary["by_snr"]["5"]["stoi"]
    assert five["n"] == 2
    assert five["mean"] == pytest.approx(table["stoi"][1:3].mean())
    zero = summary["by_snr"]["0"]["pesq_wb"]
    assert zero["n"] == 1
    assert zero["std"] is None
    assert zero["ci95"] is None


def test_summary_unknown_snr_group():
    table = pd.DataFrame({"snr": [math.nan, math.nan], **{m: [1.0, 2.0] for m in METRICS}})
    summary = summarise(table, "x")
    assert list(summary["by_snr"]) == ["unknown"]
    assert summary["by_snr"]["unknown"]["ssnr"]["mean"] == 1.5


def test_identity_model_scores_like_the_noisy_input(corpus, noisy_eval, tmp_path):
    _, noisy = noisy_eval
    summary = evaluate(corpus["manifest"], tmp_path / "eval", model=Identity(),
                       system="identity", workers=1, save_wavs=True, progress=False)
    assert summary["system"] == "identity"
    assert summary["n"] == 4
    assert summary["device"] == "cpu"
    for metric in ("pesq_wb", "stoi", "ssnr"):
        assert summary["overall"][metric]["mean"] == pytest.approx(
            noisy["overall"][metric]["mean"], abs=1e-3)
    wavs = sorted(p.name for p in (tmp_path / "eval" / "wavs").iterdir())
    assert wavs == ["t1.wav", "t2.wav", "t3.wav", f"{SILENT}.wav"]
    enhanced, rate = sf.read(tmp_path / "eval" / "wavs" / "t1.wav")
    noisy_wave, _ = sf.read(corpus["root"] / "test" / "noisy" / "t1.wav")
    assert rate == SR
    assert enhanced.shape == noisy_wave.shape
    assert np.max(np.abs(enhanced - noisy_wave)) <= 2 / 32768
    # the report's example, kept whatever save_wavs says: the same samples
    assert [p.name for p in (tmp_path / "eval" / "example").iterdir()] == ["t1.wav"]
    example, _ = sf.read(tmp_path / "eval" / "example" / "t1.wav")
    np.testing.assert_array_equal(example, enhanced)
    assert not [p for p in (tmp_path / "eval").iterdir() if p.name.endswith(".tmp")]


def test_the_example_is_kept_without_save_wavs(corpus, tmp_path, caplog):
    out = tmp_path / "eval"
    (out / "example").mkdir(parents=True)
    (out / "example" / "stale.wav").write_bytes(b"from an earlier evaluation")
    evaluate(corpus["manifest"], out, model=Identity(), system="identity",
             examples=["t3", "tr1", "nope", "t3"], progress=False)
    assert not (out / "wavs").exists()
    assert sorted(p.name for p in (out / "example").iterdir()) == ["t3.wav"]
    kept, rate = sf.read(out / "example" / "t3.wav")
    noisy_wave, _ = sf.read(corpus["root"] / "test" / "noisy" / "t3.wav")
    assert rate == SR
    assert np.max(np.abs(kept - noisy_wave)) <= 2 / 32768
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for bad in ("tr1", "nope"):      # not test utterances: said, and the scores still made
        assert (f"warning: example utterance '{bad}' is not a test utterance in "
                f"{corpus['manifest']} (e.g. 't1'); no enhanced WAV is kept for it") in warned
    assert len(pd.read_csv(out / "metrics.tsv", sep="\t")) == 4


def test_a_non_finite_output_is_scored_not_written(corpus, tmp_path, caplog):
    class NaNs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(()))

        def forward(self, spec: torch.Tensor) -> torch.Tensor:
            return spec * torch.nan

    out = tmp_path / "eval"
    summary = evaluate(corpus["manifest"], out, model=NaNs(), system="nan", save_wavs=True,
                       progress=False)
    assert summary["failed"]["pesq_wb"] == 4                  # every utterance, recorded
    assert list((out / "example").iterdir()) == list((out / "wavs").iterdir()) == []
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("warning: example/t1.wav not written: ") for m in warned)
    assert any(m.startswith("warning: wavs/t3.wav not written: ") for m in warned)


def test_example_utterance_is_the_configured_or_the_first_test_one(corpus):
    manifest = read_manifest(corpus["manifest"])
    assert example_utterance(manifest) == "t1"
    assert example_utterance(manifest.iloc[::-1]) == SILENT     # the frame's order, not sorted
    assert example_utterance(manifest, SILENT) == SILENT
    assert example_utterance(manifest, split="train") == "tr1"
    with pytest.raises(DataError, match=r"^report.example_utterance 'tr1' is not a test "
                                        r"utterance in the manifest \(e.g. 't1'\)$"):
        example_utterance(manifest, "tr1")
    with pytest.raises(DataError, match="^data/manifest.tsv has no valid utterances$"):
        example_utterance(manifest, split="valid", where="data/manifest.tsv")


def test_evaluate_unknown_split(corpus, tmp_path):
    with pytest.raises(DataError, match="has no 'valid' utterances"):
        evaluate(corpus["manifest"], tmp_path, split="valid", progress=False)
    assert not (tmp_path / "metrics.tsv").exists()


def test_cli_evaluate_noisy(corpus, tmp_path):
    out = tmp_path / "noisy" / "eval"
    assert main(["evaluate", "--noisy", "--data", str(corpus["manifest"]), "--out", str(out),
                 "--workers", "2"]) == 0
    table = pd.read_csv(out / "metrics.tsv", sep="\t")
    assert len(table) == 4
    assert json.loads((out / "summary.json").read_text())["n"] == 4


def _tiny_model_file(path):
    models = pytest.importorskip("mbsnet.models")
    cfg = {"channels": 4, "decoder": "uniform",
           "stages": [{"blocks": [{"type": "mlp", "axis": "band"}]}]}
    models.save_model(path, models.build_model(cfg), ablation="tiny", model_cfg=cfg,
                      config={})
    return path


def test_cli_evaluate_model(corpus, tmp_path, capsys):
    model = _tiny_model_file(tmp_path / "model.pt")
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(model), "--data", str(corpus["manifest"]),
                 "--out", str(out), "--workers", "1", "--device", "cpu"]) == 0
    table = pd.read_csv(out / "metrics.tsv", sep="\t", keep_default_na=False)
    assert table["system"].tolist() == ["tiny"] * 4
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["system"], summary["device"]) == ("tiny", "cpu")
    printed = capsys.readouterr().out
    assert "tiny: 4 utterances on cpu, PESQ " in printed
    assert printed.rstrip().endswith(f"-> {out} (example: t1)")
    assert not (out / "wavs").exists()
    assert [p.name for p in (out / "example").iterdir()] == ["t1.wav"]
    assert sf.info(out / "example" / "t1.wav").frames == SR * 6 // 5     # 1.2 s, as read

    assert main(["evaluate", "--model", str(model), "--data", str(corpus["manifest"]),
                 "--out", str(out), "--workers", "1", "--device", "cpu",
                 "--example", SILENT, "--example", "t2"]) == 0
    assert sorted(p.name for p in (out / "example").iterdir()) == ["t2.wav", f"{SILENT}.wav"]
    assert capsys.readouterr().out.rstrip().endswith(f"(example: t2, {SILENT})")


def test_cli_example_needs_a_model(corpus, tmp_path, capsys):
    assert main(["evaluate", "--noisy", "--data", str(corpus["manifest"]),
                 "--out", str(tmp_path), "--example", "t1"]) == 2
    assert "--example needs --model" in capsys.readouterr().err
    assert not (tmp_path / "metrics.tsv").exists()


# ---------------------------------------------------------------------------- enhance files

def test_enhance_44k_stereo_to_16k_mono(tmp_path):
    n = 44100
    t = np.arange(n) / 44100
    stereo = np.stack([0.2 * np.sin(2 * np.pi * 440 * t), 0.1 * np.sin(2 * np.pi * 440 * t)], 1)
    src = tmp_path / "in" / "song.wav"
    src.parent.mkdir()
    sf.write(src, stereo, 44100)
    written = list(enhance_files(Identity(), src, tmp_path / "out"))
    assert written == [tmp_path / "out" / "song.wav"]
    out, rate = sf.read(written[0])
    info = sf.info(written[0])
    assert rate == 16000
    assert info.channels == 1
    assert info.subtype == "PCM_16"
    assert out.shape == (16000,)
    # the mean of the channels, resampled: a 0.15-amplitude 440 Hz tone
    expected = 0.15 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.max(np.abs(out[200:-200] - expected[200:-200])) < 2e-3


def test_read_audio_unreadable_file_names_it(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....garbage")
    with pytest.raises(DataError, match="broken.wav"):
        read_16k_mono(bad)
    with pytest.raises(DataError, match="broken.wav"):
        list(enhance_files(Identity(), tmp_path, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_cli_enhance_directory(tmp_path):
    model = _tiny_model_file(tmp_path / "model.pt")
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", 0.1 * np.random.default_rng(0).standard_normal(8000), 8000)
    sf.write(src / "b.flac", 0.1 * np.random.default_rng(1).standard_normal((22050, 2)), 22050)
    assert main(["enhance", str(src), "--model", str(model), "--out", str(tmp_path / "out"),
                 "--device", "cpu"]) == 0
    assert sf.info(tmp_path / "out" / "a.wav").frames == 16000
    assert sf.info(tmp_path / "out" / "b.wav").frames == 16000
    assert main(["enhance", str(tmp_path / "missing.wav"), "--model", str(model),
                 "--out", str(tmp_path / "out2")]) == 1
