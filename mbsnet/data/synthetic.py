"""The built-in synthetic corpus: eSpeak NG talkers mixed with procedural noises.

Shaped like VoiceBank-DEMAND: distinct talkers in train and test, different noise types in
train and test, SNRs 0/5/10/15 dB (train) and 2.5/7.5/12.5/17.5 dB (test) at the active
speech level. Everything is a function of ``data.synthetic.seed``:

1. :func:`plan_corpus` draws speakers, sentences, noise types, SNRs and levels.
2. :func:`espeak.synthesize_fresh` speaks every text in plan order in a new process: eSpeak
   NG carries state from one utterance to the next, so only a fixed call sequence from a
   fresh start is reproducible.
3. :func:`render` turns one utterance into 16 kHz PCM-16 clean/noisy signals with its own
   random generator, so rendering may run in any order and in parallel.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from scipy import signal

from ..errors import ConfigError
from ..progress import parallel_map
from ..wavio import SAMPLE_RATE
from . import espeak
from .manifest import Row, choose_valid_speakers, write_pair
from .mixing import mix_pcm16, scale_to_level
from .noises import TEST_NOISES, TRAIN_NOISES, TalkerPool, colored, make_noise

logger = logging.getLogger(__name__)

ACCENTS = ("en-us", "en", "en-gb-scotland", "en-us-nyc", "en-gb-x-rp", "en-029",
           "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = tuple(f"m{i}" for i in range(1, 8)) + tuple(f"f{i}" for i in range(1, 6))
TRAIN_SNRS = (0.0, 5.0, 10.0, 15.0)
TEST_SNRS = (2.5, 7.5, 12.5, 17.5)
BABBLE_TALKERS = 8
BABBLE_SENTENCES = 4  # sentences per babble talker
LEVEL_DB = (-28.0, -20.0)  # range of the clean active speech level, dB full scale
FLOOR_DB = -60.0  # pink-noise floor under the clean speech, relative to its active level
PAD_SECONDS = (0.1, 0.4)  # range of the silence added before and after each sentence


@dataclass(frozen=True)
class Speaker:
    id: str
    voice: espeak.Voice


@dataclass(frozen=True)
class Utterance:
    utt_id: str
    split: str
    speaker: Speaker
    text: str
    noise: str
    snr: float
    level_db: float
    index: int  # position in the plan; with the seed it keys the utterance's random state


@dataclass(frozen=True)
class Plan:
    seed: int
    utterances: tuple[Utterance, ...]
    babble: tuple[tuple[Speaker, tuple[str, ...]], ...]  # talker and what it says


def sentences() -> list[str]:
    """The built-in sentence list (mbsnet/data/sentences.txt)."""
    text = resources.files(__package__).joinpath("sentences.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def sentences_digest() -> str:
    return hashlib.sha256("\n".join(sentences()).encode()).hexdigest()[:16]


def _speakers(rng: np.random.Generator, count: int) -> list[espeak.Voice]:
    """``count`` distinct voices: accent x variant pairs without repetition, each with its
    own pitch, pitch range and speaking rate."""
    pairs = list(itertools.product(ACCENTS, VARIANTS))
    order = rng.permutation(len(pairs))[:count]
    return [espeak.Voice(f"{pairs[i][0]}+{pairs[i][1]}", pitch=int(rng.integers(30, 71)),
                         pitch_range=int(rng.integers(30, 81)), rate=int(rng.integers(150, 196)))
            for i in order]


def _cycle_shuffled(rng: np.random.Generator, items: Sequence, n: int) -> list:
    """``n`` items drawn by passing through shuffled copies of ``items`` (balanced use)."""
    out: list = []
    while len(out) < n:
        out += [items[i] for i in rng.permutation(len(items))]
    return out[:n]


def plan_corpus(settings: Mapping[str, Any], valid_speakers: int | Sequence[str]) -> Plan:
    """Draw the corpus from ``data.synthetic`` settings (seed, sizes, speaker counts)."""
    seed = int(settings["seed"])
    n_train, n_test = int(settings["train_utterances"]), int(settings["test_utterances"])
    k_train, k_test = int(settings["train_speakers"]), int(settings["test_speakers"])
    available = len(ACCENTS) * len(VARIANTS) - BABBLE_TALKERS
    if k_train + k_test > available:
        raise ConfigError(f"data.synthetic: at most {available} train + test speakers "
                          f"are available, {k_train + k_test} asked for")
    for key, n, k in (("train", n_train, k_train), ("test", n_test, k_test)):
        if n < k:
            raise ConfigError(f"data.synthetic.{key}_utterances ({n}) must be at least "
                              f"{key}_speakers ({k}): every speaker needs an utterance")
    rng = np.random.default_rng(seed)
    voices = _speakers(rng, k_train + k_test + BABBLE_TALKERS)
    speakers = [Speaker(f"s{i + 1:02d}", v) for i, v in enumerate(voices[: k_train + k_test])]
    train_speakers, test_speakers = speakers[:k_train], speakers[k_train:]
    valid = set(choose_valid_speakers([s.id for s in train_speakers], valid_speakers, seed))

    all_texts = sentences()
    texts = [all_texts[i] for i in rng.permutation(len(all_texts))]
    n_test_texts = max(1, min(n_test, len(texts) // 4))  # test sentences unseen in training
    test_texts, train_texts = texts[:n_test_texts], texts[n_test_texts:]

    utterances: list[Utterance] = []
    for split, n, group, pool_texts, noises, snrs in (
            ("train", n_train, train_speakers, train_texts, TRAIN_NOISES, TRAIN_SNRS),
            ("test", n_test, test_speakers, test_texts, TEST_NOISES, TEST_SNRS)):
        conditions = _cycle_shuffled(rng, list(itertools.product(noises, snrs)), n)
        split_texts = _cycle_shuffled(rng, pool_texts, n)
        counts: dict[str, int] = {}
        for i in range(n):
            speaker = group[i % len(group)]
            counts[speaker.id] = counts.get(speaker.id, 0) + 1
            noise, snr = conditions[i]
            utterances.append(Utterance(
                utt_id=f"{speaker.id}_{counts[speaker.id]:03d}",
                split="valid" if speaker.id in valid else split, speaker=speaker,
                text=split_texts[i], noise=noise, snr=snr,
                level_db=float(rng.uniform(*LEVEL_DB)), index=len(utterances)))
    babble = tuple((Speaker(f"babble{i + 1}", v),
                    tuple(_cycle_shuffled(rng, train_texts, BABBLE_SENTENCES)))
                   for i, v in enumerate(voices[k_train + k_test:]))
    return Plan(seed, tuple(utterances), babble)


def to_16k(speech: np.ndarray) -> np.ndarray:
    """eSpeak's 22050 Hz int16 output as float64 at 16 kHz (exact polyphase 320/441)."""
    return signal.resample_poly(speech.astype(np.float64) / 32768.0, 320, 441)


def render(utt: Utterance, speech: np.ndarray, pool: TalkerPool,
           seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One utterance's PCM-16 (clean, noisy) at 16 kHz from its 22050 Hz eSpeak output."""
    rng = np.random.default_rng([seed, utt.index])
    pad = (rng.uniform(*PAD_SECONDS, size=2) * SAMPLE_RATE).astype(int)
    clean = scale_to_level(np.pad(to_16k(speech), tuple(pad)), utt.level_db)
    floor = colored(len(clean), rng, 1.0) * 10 ** ((utt.level_db + FLOOR_DB) / 20)
    noise = make_noise(utt.noise, len(clean), rng, pool)
    return mix_pcm16(clean + floor, noise, utt.snr)


# rendering workers get the plan's shared inputs once, through the pool initializer
_shared: dict[str, Any] = {}


def _init_worker(plan: Plan, speech: list[np.ndarray], pool: TalkerPool, out_dir: Path) -> None:
    _shared.update(plan=plan, speech=speech, pool=pool, out_dir=out_dir)


def _render_and_write(i: int) -> Row:
    utt: Utterance = _shared["plan"].utterances[i]
    clean, noisy = render(utt, _shared["speech"][i], _shared["pool"], _shared["plan"].seed)
    return write_pair(_shared["out_dir"], utt.split, utt.utt_id, utt.speaker.id, utt.noise,
                      utt.snr, clean, noisy)


def build(plan: Plan, out_dir: Path, workers: int = 1) -> list[Row]:
    """Write the planned corpus into ``out_dir``; return its manifest rows."""
    jobs = [(u.text, u.speaker.voice) for u in plan.utterances]
    jobs += [(text, speaker.voice) for speaker, texts in plan.babble for text in texts]
    logger.info(f"prepare: synthesising {len(jobs)} sentences with eSpeak NG")
    spoken = espeak.synthesize_fresh(jobs)
    speech, babble = spoken[: len(plan.utterances)], spoken[len(plan.utterances):]
    talkers = [np.concatenate([to_16k(s) for s in babble[i: i + BABBLE_SENTENCES]])
               for i in range(0, len(babble), BABBLE_SENTENCES)]
    pool = TalkerPool(talkers)
    pool.lpc()  # computed once here rather than in every worker
    return parallel_map(_render_and_write, range(len(plan.utterances)), workers,
                        "prepare: mixing", initializer=_init_worker,
                        initargs=(plan, speech, pool, out_dir))
