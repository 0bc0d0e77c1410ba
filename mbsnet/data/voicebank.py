"""Import a VoiceBank-DEMAND download (read only) into the prepared-corpus layout.

Two folder layouts are accepted at ``data.root``:

- official: ``clean_trainset_28spk_wav``, ``noisy_trainset_28spk_wav`` (or the ``56spk``
  variant), ``clean_testset_wav``, ``noisy_testset_wav``;
- BSRNN/CMGAN: ``train/clean``, ``train/noisy``, ``test/clean``, ``test/noisy``.

:func:`scan` validates the whole tree from the file headers before anything is written and
raises one DataError listing every problem; :func:`build` resamples each pair to 16 kHz with
soxr and writes it. Noise type and SNR come from the official ``log_*.txt`` files when
present (``log_testset.txt`` etc., lines like ``p232_001 living 2.5``), otherwise ``unknown`` / NaN.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..console import TO_STDOUT
from ..errors import ConfigError, DataError
from ..progress import parallel_map
from ..wavio import audio_info, read_16k_mono
from .manifest import UNKNOWN_NOISE, Row, choose_valid_speakers, format_list, write_pair
from .mixing import to_pcm16

logger = logging.getLogger(__name__)

OFFICIAL_TRAIN = (("clean_trainset_28spk_wav", "noisy_trainset_28spk_wav"),
                  ("clean_trainset_56spk_wav", "noisy_trainset_56spk_wav"))
OFFICIAL_TEST = ("clean_testset_wav", "noisy_testset_wav")
BSRNN = {"train": ("train/clean", "train/noisy"), "test": ("test/clean", "test/noisy")}
LOG_GLOBS = ("log_trainset*.txt", "log_testset*.txt")  # in the root or in logfiles/
VALID_SEED = 0  # picks the held-out validation speakers when data.valid_speakers is a count


@dataclass(frozen=True)
class Pair:
    utt_id: str
    split: str
    speaker: str
    clean: Path
    noisy: Path
    noise: str = UNKNOWN_NOISE
    snr: float = math.nan


@dataclass(frozen=True)
class Corpus:
    """A validated VoiceBank-DEMAND tree: its layout name and every pair, split assigned."""

    root: Path
    layout: str
    pairs: tuple[Pair, ...]


def find_layout(root: Path) -> tuple[str, dict[str, tuple[Path, Path]]]:
    """The layout of ``root`` and its ``{split: (clean_dir, noisy_dir)}``."""
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a directory")
    train = next((p for p in OFFICIAL_TRAIN if (root / p[0]).is_dir() or (root / p[1]).is_dir()),
                 OFFICIAL_TRAIN[0])
    layouts = {"official": {"train": train, "test": OFFICIAL_TEST}, "bsrnn": BSRNN}
    present = {name: [d for pair in dirs.values() for d in pair if (root / d).is_dir()]
               for name, dirs in layouts.items()}
    best = max(layouts, key=lambda name: len(present[name]))
    missing = [d for pair in layouts[best].values() for d in pair if d not in present[best]]
    if not present[best]:
        raise DataError(
            f"{root} does not look like VoiceBank-DEMAND: expected the folders "
            f"{', '.join(OFFICIAL_TRAIN[0] + OFFICIAL_TEST)} (or the 56spk train folders), "
            f"or {', '.join(d for pair in BSRNN.values() for d in pair)}")
    if missing:
        raise DataError(f"VoiceBank-DEMAND at {root} ({best} layout) is missing the folder(s):\n"
                        + format_list(missing))
    return best, {split: (root / c, root / n) for split, (c, n) in layouts[best].items()}


def speaker_of(utt_id: str) -> str:
    """Speaker id from a VoiceBank file name: ``p226_001`` -> ``p226``."""
    return utt_id.split("_", 1)[0]


def log_files(root: Path) -> list[Path]:
    """The official log files, in ``root`` or its ``logfiles`` folder (logfiles.zip)."""
    return sorted(p for folder in (root, root / "logfiles") for pattern in LOG_GLOBS
                  for p in folder.glob(pattern))


def read_logs(root: Path) -> dict[str, tuple[str, float]]:
    """``{utt_id: (noise, snr)}`` from the official log files (see :func:`log_files`)."""
    labels: dict[str, tuple[str, float]] = {}
    for log in log_files(root):
        skipped = 0
        for line in log.read_text(errors="replace").splitlines():
            fields = line.split()
            try:
                labels[fields[0]] = (fields[1], float(fields[2]))
            except (IndexError, ValueError):
                skipped += bool(line.strip())
        if skipped:
            logger.info(f"prepare: {log.name}: ignored {skipped} line(s) not of the form "
                        f"'<utt_id> <noise> <snr>'")
    return labels


def _wavs(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() == ".wav"}


def _check_header(path: Path) -> tuple[str, str, Any]:
    """``(problem, detail, info)``: problem is '' for a readable mono file with samples."""
    if path.stat().st_size == 0:
        return "empty files", "", None
    try:
        info = audio_info(path)
    except DataError as exc:
        return "unreadable or corrupt files", f": {exc.__cause__}", None
    if info.frames == 0:
        return "empty files", "", None
    if info.channels != 1:
        return "files that are not mono", f": {info.channels} channels", info
    return "", "", info


class _Problems:
    """Validation findings grouped by kind, raised together as one DataError."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.found: dict[str, list[str]] = {}

    def add(self, kind: str, path: Path, detail: str = "") -> None:
        self.found.setdefault(kind, []).append(f"{path.relative_to(self.root)}{detail}")

    def raise_if_any(self) -> None:
        if self.found:
            count = sum(len(items) for items in self.found.values())
            sections = [f"{kind} ({len(items)}):\n{format_list(items)}"
                        for kind, items in self.found.items()]
            raise DataError(f"VoiceBank-DEMAND at {self.root} has {count} problem(s); nothing "
                            f"was written:\n" + "\n".join(sections))


def _check_pair(clean: Path, noisy: Path, problems: _Problems) -> None:
    infos = []
    for path in (clean, noisy):
        problem, detail, info = _check_header(path)
        if problem:
            problems.add(problem, path, detail)
        infos.append(info)
    c, n = infos
    if c is not None and n is not None and (c.frames, c.samplerate) != (n.frames, n.samplerate):
        problems.add("clean/noisy length mismatch", clean,
                     f": clean {c.frames} samples at {c.samplerate} Hz, "
                     f"noisy {n.frames} at {n.samplerate} Hz")


def scan(root: str | Path, valid_speakers: int | Sequence[str]) -> Corpus:
    """Validate the tree at ``root`` (headers only, nothing written) and list its pairs,
    with training speakers in ``valid_speakers`` moved to the ``valid`` split."""
    root = Path(root).expanduser()
    layout, dirs = find_layout(root)
    problems = _Problems(root)
    labels = read_logs(root)
    pairs: list[Pair] = []
    for split, (clean_dir, noisy_dir) in dirs.items():
        clean, noisy = _wavs(clean_dir), _wavs(noisy_dir)
        if not clean and not noisy:
            problems.add("folders without any .wav file", clean_dir, f" and {noisy_dir.name}")
        for stem in sorted(set(clean) - set(noisy)):
            problems.add("clean files without a noisy partner", clean[stem])
        for stem in sorted(set(noisy) - set(clean)):
            problems.add("noisy files without a clean partner", noisy[stem])
        for stem in sorted(set(clean) & set(noisy)):
            _check_pair(clean[stem], noisy[stem], problems)
            noise, snr = labels.get(stem, (UNKNOWN_NOISE, math.nan))
            pairs.append(Pair(stem, split, speaker_of(stem), clean[stem], noisy[stem], noise, snr))
    test_ids = {p.utt_id for p in pairs if p.split == "test"}
    for pair in pairs:
        if pair.split == "train" and pair.utt_id in test_ids:
            problems.add("file names in both train and test", pair.clean)
    problems.raise_if_any()

    train_speakers = sorted({p.speaker for p in pairs if p.split == "train"})
    shared = sorted(set(train_speakers) & {p.speaker for p in pairs if p.split == "test"})
    if shared:
        logger.warning(f"prepare: warning: speakers in both train and test: "
                       f"{', '.join(shared)}", extra=TO_STDOUT)
    try:
        valid = set(choose_valid_speakers(train_speakers, valid_speakers, VALID_SEED))
    except ConfigError as exc:
        raise ConfigError(f"{exc} (VoiceBank-DEMAND at {root})") from None
    pairs = [dataclasses.replace(p, split="valid") if p.speaker in valid else p for p in pairs]
    return Corpus(root, layout, tuple(pairs))


def fingerprint(root: str | Path) -> str:
    """A digest of the names, sizes and modification times of the tree's WAV and log files
    (cheap; tells whether a previous import is still up to date)."""
    root = Path(root).expanduser()
    _, dirs = find_layout(root)
    digest = hashlib.sha256()
    files = log_files(root) + sorted(
        p for pair in dirs.values() for d in pair for p in d.iterdir()
        if p.suffix.lower() == ".wav")
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _import_pair(pair: Pair, out_dir: Path) -> Row:
    clean, noisy = (to_pcm16(read_16k_mono(path, dtype="float64"))
                    for path in (pair.clean, pair.noisy))
    return write_pair(out_dir, pair.split, pair.utt_id, pair.speaker, pair.noise, pair.snr,
                      clean, noisy)


def build(corpus: Corpus, out_dir: Path, workers: int = 1) -> list[Row]:
    """Resample every pair of a scanned corpus to 16 kHz PCM-16 under ``out_dir``."""
    logger.info(f"prepare: importing {len(corpus.pairs)} VoiceBank-DEMAND pairs from "
                f"{corpus.root} ({corpus.layout} layout)")
    return parallel_map(functools.partial(_import_pair, out_dir=out_dir), corpus.pairs,
                        workers, "prepare: resampling")
