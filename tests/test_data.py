"""Corpus preparation (synthetic and VoiceBank-DEMAND), mixing and the datasets."""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from mbsnet.cli import main as cli_main
from mbsnet.config import load_config
from mbsnet.data import espeak, noises, synthetic, voicebank
from mbsnet.data.datasets import EvalDataset, TrainDataset
from mbsnet.data.manifest import COLUMNS, MANIFEST, read_manifest
from mbsnet.data.mixing import active_power, mix_at_snr, mix_pcm16, snr_db
from mbsnet.data.prepare import STAMP, prepare_corpus
from mbsnet.errors import ConfigError, DataError, MbsnetError

from .fake_voicebank import make_fake_voicebank
from .helpers import ROOT

TINY = {"seed": 3, "train_utterances": 6, "test_utterances": 4, "train_speakers": 3,
        "test_speakers": 2}


def make_config(**data) -> dict:
    config = load_config(ROOT / "config.yaml")
    config["data"].update(copy.deepcopy(data))
    return config


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read(path) -> np.ndarray:
    return sf.read(path, dtype="float64")[0]


@pytest.fixture(scope="module")
def synthetic_corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    assert prepare_corpus(make_config(source="synthetic", synthetic=TINY, valid_speakers=1), out)
    return out


# -- mixing ----------------------------------------------------------------------------

def test_active_power_ignores_pauses_and_matches_a_steady_signal():
    t = np.arange(16000) / 16000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    assert active_power(tone) == pytest.approx(0.125, rel=1e-3)
    gated = np.concatenate([tone, np.zeros(32000), tone])  # two thirds silence
    assert active_power(gated) == pytest.approx(0.125, rel=1e-3)
    assert active_power(np.zeros(1000)) == 0.0


def test_mix_pcm16_hits_the_snr_on_the_stored_signals():
    rng = np.random.default_rng(0)
    speech = np.repeat(rng.uniform(0, 1, 40), 400) * rng.standard_normal(16000) * 0.05
    for snr in (0.0, 2.5, 17.5):
        clean, noisy = mix_pcm16(speech, noises.colored(16000, rng, 1.0), snr)
        assert clean.dtype == noisy.dtype == np.int16
        assert abs(snr_db(clean / 32768, noisy / 32768) - snr) < 0.01


def test_mix_scales_clean_and_noisy_together_instead_of_clipping():
    rng = np.random.default_rng(1)
    clean = 0.9 * np.sin(np.linspace(0.1, 200.1, 8000))
    scaled_clean, noisy = mix_at_snr(clean, rng.standard_normal(8000), 0.0)
    assert np.max(np.abs(noisy)) == pytest.approx(0.99)
    ratio = scaled_clean / clean
    assert np.allclose(ratio, ratio[0])
    assert ratio[0] < 1
    assert snr_db(scaled_clean, noisy) == pytest.approx(0.0, abs=1e-9)


# -- noises and speech -----------------------------------------------------------------

def test_noises_have_the_length_unit_level_and_are_reproducible():
    rng = np.random.default_rng(0)
    pool = noises.TalkerPool([rng.standard_normal(8000) * np.repeat(rng.uniform(0, 1, 20), 400)
                              for _ in range(8)])
    assert set(noises.TRAIN_NOISES).isdisjoint(noises.TEST_NOISES)
    assert set(noises.TRAIN_NOISES) | set(noises.TEST_NOISES) == set(noises.GENERATORS)
    for kind in noises.GENERATORS:
        a = noises.make_noise(kind, 4001, np.random.default_rng(5), pool)
        b = noises.make_noise(kind, 4001, np.random.default_rng(5), pool)
        assert a.shape == (4001,), kind
        assert np.array_equal(a, b), kind
        assert np.sqrt(np.mean(a ** 2)) == pytest.approx(1.0), kind
    with pytest.raises(ValueError, match="unknown noise type"):
        noises.make_noise("rain", 10, rng, pool)


def test_colored_noise_has_the_requested_slope():
    spectrum = np.abs(np.fft.rfft(noises.colored(2 ** 16, np.random.default_rng(0), 1.0))) ** 2
    freqs = np.fft.rfftfreq(2 ** 16, 1 / 16000)

    def band(lo: float) -> float:
        return spectrum[(freqs >= lo) & (freqs < 2 * lo)].sum()

    # pink: equal power per octave
    assert 10 * np.log10(band(2000) / band(500)) == pytest.approx(0.0, abs=0.5)


def test_espeak_in_a_fresh_process_is_reproducible():
    jobs = [("Hello world.", espeak.Voice("en-us+f3", 60, 50, 170)),  # f3 breathes: random
            ("Good morning.", espeak.Voice("en-gb-scotland+m2", 40, 40, 180))]
    first, second = espeak.synthesize_fresh(jobs), espeak.synthesize_fresh(jobs)
    assert [a.dtype for a in first] == [np.int16, np.int16]
    assert all(len(a) > espeak.ESPEAK_RATE * 0.3 for a in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    with pytest.raises(MbsnetError, match="voice 'xx-none\\+m1'"):
        espeak.synthesize_fresh([("Hello.", espeak.Voice("xx-none+m1"))])


def test_resampling_is_the_exact_polyphase_320_441():
    x = (np.random.default_rng(0).standard_normal(22050) * 3000).astype(np.int16)
    y = synthetic.to_16k(x)
    assert len(y) == 16000
    from scipy.signal import resample_poly
    assert np.array_equal(y, resample_poly(x / 32768.0, 320, 441))


# -- synthetic corpus ------------------------------------------------------------------

def test_synthetic_plan_has_distinct_speakers_and_conditions():
    settings = {**make_config()["data"]["synthetic"], "train_utterances": 192,
                "test_utterances": 24, "train_speakers": 8, "test_speakers": 2}
    plan = synthetic.plan_corpus(settings, 1)
    by_split = {s: [u for u in plan.utterances if u.split == s] for s in ("train", "valid", "test")}
    assert [len(by_split[s]) for s in by_split] == [168, 24, 24]
    speakers = {s: {u.speaker for u in us} for s, us in by_split.items()}
    assert [len(speakers[s]) for s in speakers] == [7, 1, 2]
    voices = {s: {sp.voice.name for sp in group} for s, group in speakers.items()}
    babble = {sp.voice.name for sp, _ in plan.babble}
    assert not (voices["train"] | voices["valid"]) & voices["test"]
    assert not (voices["train"] | voices["valid"] | voices["test"]) & babble
    assert {u.snr for u in by_split["train"]} == set(synthetic.TRAIN_SNRS)
    assert {u.snr for u in by_split["test"]} == set(synthetic.TEST_SNRS)
    assert {u.noise for u in by_split["test"]} == set(noises.TEST_NOISES)
    assert not {u.text for u in by_split["test"]} & {u.text for u in by_split["train"]}
    assert len(synthetic.sentences()) >= 250


@pytest.mark.parametrize(("settings", "valid", "message"), [
    ({"train_speakers": 90}, 1, "speakers"),
    ({"train_utterances": 2}, 1, "train_utterances"),
    ({}, 3, "valid_speakers"),
    ({}, ["s99"], "s99"),
], ids=["more-speakers-than-voices", "too-few-utterances", "all-speakers-held-out",
        "unknown-valid-speaker"])
def test_synthetic_plan_rejects_impossible_settings(settings, valid, message):
    with pytest.raises(ConfigError, match=message):
        synthetic.plan_corpus({**TINY, **settings}, valid)


def test_synthetic_corpus_files_and_manifest(synthetic_corpus):
    manifest = read_manifest(synthetic_corpus / MANIFEST)
    assert tuple(manifest.columns) == COLUMNS
    assert manifest["split"].value_counts().to_dict() == {"train": 4, "valid": 2, "test": 4}
    for row in manifest.itertuples():
        for path in (row.clean, row.noisy):
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.subtype, info.format) == \
                (16000, 1, "PCM_16", "WAV")
            assert info.frames == round(row.duration * 16000)
        assert Path(row.clean) == synthetic_corpus / row.split / "clean" / f"{row.utt_id}.wav"
    text = (synthetic_corpus / MANIFEST).read_text().splitlines()
    assert text[0].split("\t") == list(COLUMNS)
    assert all(not Path(line.split("\t")[6]).is_absolute() for line in text[1:])


def test_synthetic_mixtures_hit_the_target_snr(synthetic_corpus):
    manifest = read_manifest(synthetic_corpus / MANIFEST)
    for row in manifest.itertuples():
        clean, noisy = read(row.clean), read(row.noisy)
        assert abs(snr_db(clean, noisy) - row.snr) <= 0.1, row.utt_id
        frames = clean[: len(clean) // 160 * 160].reshape(-1, 160)
        assert np.all(np.any(frames != 0, axis=1)), "the pink floor leaves no silent frame"


def test_synthetic_speakers_are_disjoint_across_splits(synthetic_corpus):
    manifest = read_manifest(synthetic_corpus / MANIFEST)
    groups = manifest.groupby("split")["speaker"].apply(set).to_dict()
    assert len(groups["train"]) == 2
    assert len(groups["valid"]) == 1
    assert len(groups["test"]) == 2
    assert not groups["train"] & groups["test"]
    assert not groups["valid"] & groups["test"]
    assert not groups["train"] & groups["valid"]
    noise = manifest.groupby("split")["noise"].apply(set).to_dict()
    assert not (noise["train"] | noise["valid"]) & noise["test"]


def test_synthetic_corpus_is_byte_identical_across_runs_and_workers(synthetic_corpus, tmp_path):
    config = make_config(source="synthetic", synthetic=TINY, valid_speakers=1)
    assert prepare_corpus(config, tmp_path / "again", workers=2)
    assert tree_digest(tmp_path / "again") == tree_digest(synthetic_corpus)
    other = make_config(source="synthetic", synthetic={**TINY, "seed": 4}, valid_speakers=1)
    assert prepare_corpus(other, tmp_path / "other")
    assert tree_digest(tmp_path / "other") != tree_digest(synthetic_corpus)


def test_second_prepare_is_a_no_op_and_a_config_change_rebuilds(tmp_path):
    small = {**TINY, "train_utterances": 3, "test_utterances": 2, "test_speakers": 1}
    config = make_config(source="synthetic", synthetic=small, valid_speakers=0)
    out = tmp_path / "data"
    assert prepare_corpus(config, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert not prepare_corpus(config, out)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    next(out.glob("test/noisy/*.wav")).unlink()  # an incomplete corpus is rebuilt
    assert prepare_corpus(config, out)
    config["data"]["valid_speakers"] = 1
    assert prepare_corpus(config, out)
    assert "valid" in read_manifest(out / MANIFEST)["split"].values
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary left


# -- VoiceBank-DEMAND ------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["official", "bsrnn"])
def test_voicebank_import(tmp_path, layout):
    tree = make_fake_voicebank(tmp_path / "vb", layout)
    user_files = tree_digest(tree.root)
    out = tmp_path / "data"
    assert prepare_corpus(make_config(source="voicebank", root=str(tree.root),
                                      valid_speakers=["p239"]), out)
    assert tree_digest(tree.root) == user_files
    manifest = read_manifest(out / MANIFEST).set_index("utt_id")
    assert sorted(manifest.index) == sorted(tree.utterances["train"] + tree.utterances["test"])
    assert set(manifest[manifest.split == "valid"].speaker) == {"p239"}
    assert set(manifest[manifest.split == "train"].speaker) == {"p226", "p287"}
    assert set(manifest[manifest.split == "test"].speaker) == {"p232"}
    for utt, row in manifest.iterrows():
        if layout == "official":
            assert (row.noise, row.snr) == tree.labels[utt]
        else:
            assert row.noise == "unknown"
            assert math.isnan(row.snr)
        split = "test" if utt in tree.utterances["test"] else "train"
        source, rate = sf.read(tree.dirs[split][0] / f"{utt}.wav", dtype="float64")
        clean, out_rate = sf.read(row.clean, dtype="float64")
        assert out_rate == 16000
        assert sf.info(row.noisy).frames == len(clean)
        expected = soxr.resample(source, rate, 16000, quality="HQ")
        assert len(clean) == len(expected) == round(row.duration * 16000)
        assert np.max(np.abs(clean - expected)) <= 1 / 32768


def test_voicebank_logs_in_logfiles_folder_and_odd_lines(tmp_path, caplog):
    tree = make_fake_voicebank(tmp_path / "vb", "official", per_speaker=1)
    (tree.root / "logfiles").mkdir()
    for log in tree.root.glob("log_*.txt"):
        log.rename(tree.root / "logfiles" / log.name)
    (tree.root / "logfiles" / "log_readme.txt").write_text("Noise types and SNRs per file\n")
    with open(tree.root / "logfiles" / "log_testset.txt", "a") as log:
        log.write("p232_009 cafe loud\n")
    caplog.set_level(logging.INFO, logger="mbsnet")
    labels = voicebank.read_logs(tree.root)
    assert labels == {utt: tree.labels[utt] for utt in tree.labels}
    assert [r.getMessage() for r in caplog.records] == [
        "prepare: log_testset.txt: ignored 1 line(s) not of the form '<utt_id> <noise> <snr>'"]


def test_voicebank_prepare_is_a_no_op_until_the_download_changes(tmp_path):
    tree = make_fake_voicebank(tmp_path / "vb", "bsrnn", per_speaker=1)
    config = make_config(source="voicebank", root=str(tree.root), valid_speakers=0)
    assert prepare_corpus(config, tmp_path / "data")
    assert not prepare_corpus(config, tmp_path / "data")
    path = tree.dirs["test"][0] / "p232_001.wav"
    sf.write(path, np.zeros(480) + 0.1, 48000, subtype="PCM_16")
    sf.write(tree.dirs["test"][1] / "p232_001.wav", np.zeros(480) + 0.1, 48000, subtype="PCM_16")
    os.utime(path, ns=(1, 1))
    assert prepare_corpus(config, tmp_path / "data")


def _remove_folder(tree):
    (tree.dirs["test"][1]).rename(tree.root / "elsewhere")
    return ["noisy_testset_wav"]


def _clean_without_noisy(tree):
    for utt in tree.utterances["train"][:2]:
        (tree.dirs["train"][1] / f"{utt}.wav").unlink()
    return ["clean files without a noisy partner (2)",
            *[f"clean_trainset_28spk_wav/{u}.wav" for u in tree.utterances["train"][:2]]]


def _noisy_without_clean(tree):
    (tree.dirs["test"][0] / "p232_002.wav").unlink()
    return ["noisy files without a clean partner", "noisy_testset_wav/p232_002.wav"]


def _length_mismatch(tree):
    path = tree.dirs["train"][1] / "p226_001.wav"
    samples, rate = sf.read(path)
    sf.write(path, samples[:-10], rate, subtype="PCM_16")
    return ["length mismatch", "clean_trainset_28spk_wav/p226_001.wav"]


def _stereo(tree):
    path = tree.dirs["test"][0] / "p232_001.wav"
    samples, rate = sf.read(path)
    sf.write(path, np.stack([samples, samples], axis=1), rate, subtype="PCM_16")
    return ["not mono", "clean_testset_wav/p232_001.wav: 2 channels"]


def _corrupt(tree):
    (tree.dirs["train"][0] / "p287_002.wav").write_bytes(b"RIFF\x00\x01garbage" * 50)
    return ["unreadable or corrupt", "clean_trainset_28spk_wav/p287_002.wav"]


def _empty(tree):
    (tree.dirs["train"][1] / "p239_001.wav").write_bytes(b"")
    sf.write(tree.dirs["test"][1] / "p232_001.wav", np.zeros(0), 48000, subtype="PCM_16")
    return ["empty files (2)", "noisy_trainset_28spk_wav/p239_001.wav",
            "noisy_testset_wav/p232_001.wav"]


@pytest.mark.parametrize("damage", [_remove_folder, _clean_without_noisy, _noisy_without_clean,
                                    _length_mismatch, _stereo, _corrupt, _empty],
                         ids=lambda f: f.__name__.strip("_"))
def test_voicebank_validation_errors_name_the_files_and_write_nothing(tmp_path, damage):
    tree = make_fake_voicebank(tmp_path / "vb", "official")
    expected = damage(tree)
    out = tmp_path / "results" / "data"
    with pytest.raises(DataError) as error:
        prepare_corpus(make_config(source="voicebank", root=str(tree.root)), out)
    for text in expected:
        assert text in str(error.value)
    assert not out.exists()
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_voicebank_error_list_is_capped(tmp_path):
    tree = make_fake_voicebank(tmp_path / "vb", "bsrnn", train_speakers=("p226",), per_speaker=14)
    for path in tree.dirs["train"][1].iterdir():
        path.unlink()
    with pytest.raises(DataError, match=r"clean files without a noisy partner \(14\)") as error:
        prepare_corpus(make_config(source="voicebank", root=str(tree.root)), tmp_path / "d")
    assert "... and 4 more" in str(error.value)
    assert str(error.value).count("train/clean/p226_") == 10


def test_voicebank_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.root"):
        prepare_corpus(make_config(source="voicebank", root=None), tmp_path / "d")
    with pytest.raises(DataError, match="not a directory"):
        prepare_corpus(make_config(source="voicebank", root=str(tmp_path / "nope")), tmp_path / "d")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="does not look like VoiceBank-DEMAND"):
        prepare_corpus(make_config(source="voicebank", root=str(tmp_path / "empty")),
                       tmp_path / "d")
    tree = make_fake_voicebank(tmp_path / "vb", "bsrnn", per_speaker=1)
    before = tree_digest(tree.root)
    with pytest.raises(ConfigError, match="overlaps"):
        prepare_corpus(make_config(source="voicebank", root=str(tree.root)), tree.root / "out")
    with pytest.raises(ConfigError, match="overlaps"):
        prepare_corpus(make_config(source="voicebank", root=str(tree.root)), tree.root)
    with pytest.raises(ConfigError, match="valid_speakers"):
        prepare_corpus(make_config(source="voicebank", root=str(tree.root), valid_speakers=3),
                       tmp_path / "d")
    assert tree_digest(tree.root) == before


# -- command line ----------------------------------------------------------------------

def test_prepare_command(tmp_path, capsys):
    tree = make_fake_voicebank(tmp_path / "vb", "official", per_speaker=1)
    config = tmp_path / "config.yaml"
    config.write_text((ROOT / "config.yaml").read_text().replace(
        "source: synthetic", "source: voicebank").replace("root: null", f"root: {tree.root}"))
    out = tmp_path / "data"
    assert cli_main(["prepare", "--config", str(config), "--out", str(out)]) == 0
    err = capsys.readouterr()
    assert "resampling: 4/4" in err.err
    assert "wrote" in err.out
    assert (out / MANIFEST).is_file()
    assert (out / STAMP).is_file()
    (tree.dirs["train"][0] / "p226_001.wav").unlink()
    assert cli_main(["prepare", "--config", str(config), "--out", str(tmp_path / "x"),
                     "--force"]) == 1
    assert "noisy files without a clean partner" in capsys.readouterr().err


# -- manifest and datasets -------------------------------------------------------------

def test_read_manifest_errors(tmp_path, synthetic_corpus):
    with pytest.raises(DataError, match="not found"):
        read_manifest(tmp_path / "missing.tsv")
    good = (synthetic_corpus / MANIFEST).read_text()
    cases = {"columns": good.replace("noise\tsnr", "noise\tSNR"),
             "bad snr": good.replace("\t0.0\t", "\tzero\t", 1),
             "unknown split": good.replace("\ttest\t", "\tdev\t", 1),
             "do not exist": good.replace(".wav", "_gone.wav", 1)}
    for message, text in cases.items():
        path = synthetic_corpus / f"broken_{message.replace(' ', '_')}.tsv"
        path.write_text(text)
        try:
            with pytest.raises(DataError, match=message):
                read_manifest(path)
        finally:
            path.unlink()


def test_train_dataset_crops(synthetic_corpus):
    manifest = synthetic_corpus / MANIFEST
    data = TrainDataset(manifest, split="train", crop_seconds=1.0, seed=7)
    assert len(data) == 4
    rows = read_manifest(manifest).query("split == 'train'").reset_index(drop=True)
    epoch0 = [data[i] for i in range(len(data))]
    for i, (clean, noisy) in enumerate(epoch0):
        assert clean.shape == noisy.shape == (16000,)
        assert clean.dtype == torch.float32
        start = data.crop_start(i)
        for got, path in ((clean, rows.clean[i]), (noisy, rows.noisy[i])):
            expected = read(path)[start:start + 16000].astype(np.float32)
            assert np.array_equal(got.numpy(), expected)
    again = TrainDataset(manifest, split="train", crop_seconds=1.0, seed=7)
    assert all(torch.equal(again[i][1], epoch0[i][1]) for i in reversed(range(len(data))))
    data.set_epoch(1)
    assert [data.crop_start(i) for i in range(4)] != [again.crop_start(i) for i in range(4)]
    loader = torch.utils.data.DataLoader(again, batch_size=2, num_workers=2)
    batches = torch.cat([clean for clean, _ in loader])
    assert torch.equal(batches, torch.stack([c for c, _ in epoch0]))


def test_train_dataset_tiles_short_utterances(synthetic_corpus):
    data = TrainDataset(synthetic_corpus / MANIFEST, split="test", crop_seconds=10.0)
    clean, noisy = data[0]
    original = read(data.rows.noisy[0]).astype(np.float32)
    assert noisy.shape == (160000,)
    assert data.crop_start(0) == 0
    n = len(original)
    assert np.array_equal(noisy[:n].numpy(), original)
    assert np.array_equal(noisy[n:2 * n].numpy(), original)
    assert np.array_equal(noisy[-(160000 % n or n):].numpy(), original[:160000 % n or n])


def test_eval_dataset_returns_whole_utterances(synthetic_corpus):
    data = EvalDataset(synthetic_corpus / MANIFEST, split="test")
    assert len(data) == 4
    item = data[1]
    row = data.rows.iloc[1]
    assert item["utt_id"] == row.utt_id
    assert item["speaker"] == row.speaker
    assert item["noise"] == row.noise
    assert item["snr"] == row.snr
    assert np.array_equal(item["clean"].numpy(), read(row.clean).astype(np.float32))
    assert item["noisy"].shape == item["clean"].shape == (round(row.duration * 16000),)
    with pytest.raises(DataError, match="no 'dev' utterances"):
        EvalDataset(synthetic_corpus / MANIFEST, split="dev")
