"""Test audio: a speech-like signal, and tiny prepared corpora (docs/results.md, ``data/``)
written with the package's own WAV and manifest writers, so they are what `mbsnet prepare`
would write."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mbsnet.data.manifest import MANIFEST, write_manifest, write_pair
from mbsnet.data.mixing import to_pcm16
from mbsnet.wavio import SAMPLE_RATE


def speechlike(seconds: float, f0: float, seed: int, *,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Voiced-sounding bursts, peak below 0.25: harmonics of ``f0`` under a syllable-rate
    envelope. PESQ takes it for speech, which random noise is not: the training tests need
    PESQ scores for the discriminator targets and the validation."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    rng = np.random.default_rng(seed)
    voice = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) / k for k in range(1, 8))
    envelope = 0.4 + 0.6 * np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6)) ** 2
    return 0.25 * voice * envelope / 2.6


@dataclass(frozen=True)
class Utterance:
    """One clean/noisy pair of float samples in [-1, 1] and its manifest fields."""

    utt_id: str
    split: str
    clean: np.ndarray
    noisy: np.ndarray
    speaker: str = "spk"
    noise: str = "white"
    snr: float = 10.0


def write_corpus(root: Path, utterances: Iterable[Utterance]) -> Path:
    """Write the utterances as 16 kHz PCM-16 WAV pairs under ``root`` and their manifest
    (ordered by split, then id, as `mbsnet prepare` orders it); return the manifest."""
    rows = [write_pair(root, u.split, u.utt_id, u.speaker, u.noise, u.snr, to_pcm16(u.clean),
                       to_pcm16(u.noisy)) for u in utterances]
    manifest = root / MANIFEST
    write_manifest(rows, manifest)
    return manifest


def training_corpus(root: Path) -> Path:
    """The training tests' corpus: 4 train utterances of 2 speakers, 1 valid, 1 test, each
    0.7 s of speech in white noise; returns its manifest."""
    plan = [("train", f"tr{i}", f"s{i % 2}") for i in range(4)] + \
           [("valid", "va0", "s2"), ("test", "te0", "t0")]
    utterances = []
    for index, (split, utt, speaker) in enumerate(plan):
        clean = speechlike(0.7, 110 + 20 * index, index)
        noise = np.random.default_rng(100 + index).normal(0, 0.03, clean.shape)
        utterances.append(Utterance(utt, split, clean, clean + noise, speaker=speaker))
    return write_corpus(root, utterances)
