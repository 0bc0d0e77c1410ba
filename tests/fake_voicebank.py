"""A tiny generated VoiceBank-DEMAND tree for tests (a few short 48 kHz files).

    tree = make_fake_voicebank(tmp_path / "vb", layout="official")
    tree.dirs["train"]            # (clean folder, noisy folder)
    tree.utterances["test"]       # ["p232_001", ...]
    tree.labels["p232_001"]       # ("cafe", 2.5) as written to log_testset.txt
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf

from .corpus import speechlike

OFFICIAL_DIRS = {"train": ("clean_trainset_28spk_wav", "noisy_trainset_28spk_wav"),
                 "test": ("clean_testset_wav", "noisy_testset_wav")}
BSRNN_DIRS = {"train": ("train/clean", "train/noisy"), "test": ("test/clean", "test/noisy")}
LOG_FILES = {"train": "log_trainset_28spk.txt", "test": "log_testset.txt"}
TRAIN_CONDITIONS = [("bus", 0.0), ("cafe", 5.0), ("living", 10.0), ("office", 15.0)]
TEST_CONDITIONS = [("bus", 2.5), ("cafe", 7.5), ("living", 12.5), ("office", 17.5)]


@dataclass
class FakeVoiceBank:
    root: Path
    layout: str
    sample_rate: int
    dirs: dict[str, tuple[Path, Path]]
    utterances: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, tuple[str, float]] = field(default_factory=dict)


def make_fake_voicebank(root: Path, layout: Literal["official", "bsrnn"] = "official", *,
                        train_speakers: tuple[str, ...] = ("p226", "p239", "p287"),
                        test_speakers: tuple[str, ...] = ("p232",), per_speaker: int = 2,
                        seconds: float = 0.25, sample_rate: int = 48000,
                        logs: bool | None = None, seed: int = 0) -> FakeVoiceBank:
    """Write a VoiceBank-DEMAND-shaped tree at ``root``: ``per_speaker`` mono PCM-16 pairs
    per speaker, utterance ``k`` lasting ``seconds * (1 + 0.25 k)``. ``logs`` (default: only
    for the official layout) writes the ``log_*.txt`` files with noise type and SNR."""
    rng = np.random.default_rng(seed)
    names = OFFICIAL_DIRS if layout == "official" else BSRNN_DIRS
    tree = FakeVoiceBank(root, layout, sample_rate,
                         {split: (root / c, root / n) for split, (c, n) in names.items()})
    for split, speakers, conditions in (("train", train_speakers, TRAIN_CONDITIONS),
                                        ("test", test_speakers, TEST_CONDITIONS)):
        clean_dir, noisy_dir = tree.dirs[split]
        clean_dir.mkdir(parents=True, exist_ok=True)
        noisy_dir.mkdir(parents=True, exist_ok=True)
        tree.utterances[split] = []
        for speaker in speakers:
            for k in range(per_speaker):
                utt = f"{speaker}_{k + 1:03d}"
                clean = speechlike(seconds * (1 + 0.25 * k), rng.uniform(100, 220),
                                   int(rng.integers(2**31)), sample_rate=sample_rate)
                noise, snr = conditions[len(tree.utterances[split]) % len(conditions)]
                noisy = clean + rng.standard_normal(clean.size) * np.std(clean) * 10 ** (-snr / 20)
                sf.write(clean_dir / f"{utt}.wav", clean, sample_rate, subtype="PCM_16")
                sf.write(noisy_dir / f"{utt}.wav", noisy, sample_rate, subtype="PCM_16")
                tree.utterances[split].append(utt)
                tree.labels[utt] = (noise, snr)
        if logs if logs is not None else layout == "official":
            (root / LOG_FILES[split]).write_text("".join(
                f"{utt} {tree.labels[utt][0]} {tree.labels[utt][1]:g}\n"
                for utt in tree.utterances[split]))
    return tree
