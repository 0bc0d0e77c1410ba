"""Audio files in and out, without torch (the data and scoring workers import it).

Every reader raises :class:`~mbsnet.errors.DataError` naming the file it could not read.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .atomic import atomic_path
from .errors import DataError

SAMPLE_RATE = 16000
"""The sample rate of every signal mbsnet trains on, writes and scores."""

AUDIO_SUFFIXES = frozenset("." + fmt.lower() for fmt in sf.available_formats())
"""File endings libsndfile can read."""

_READ_ERRORS = (sf.LibsndfileError, RuntimeError, OSError)


def _check_is_file(path: str | Path) -> None:
    """libsndfile says only "System error" for a missing file or a folder; say which."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an audio file")
    if not path.exists():
        raise DataError(f"audio file {path} does not exist")


def audio_info(path: str | Path) -> sf._SoundFileInfo:
    """The header of an audio file (rate, channels, frames) without reading the samples."""
    _check_is_file(path)
    try:
        return sf.info(str(path))
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read audio file {path}: {exc}") from exc


def check_finite(samples: np.ndarray, where: str | Path, offset: int = 0) -> None:
    """DataError naming ``where`` and the first NaN/Inf sample (frame index) if there is one.

    Float WAV/FLAC files can hold NaN or Inf; treated as audio they would turn into garbage
    (every sample -32768 after PCM conversion, metrics that look valid), so they stop here.
    """
    if samples.size == 0 or np.isfinite(samples).all():
        return
    per_frame = samples.reshape(samples.shape[0], -1)
    finite = np.isfinite(per_frame)
    bad = np.flatnonzero(~finite.all(axis=1))
    first = int(bad[0])
    value = per_frame[first][~finite[first]][0]
    raise DataError(f"{where}: sample {offset + first} is {value} ({bad.size} non-finite "
                    "samples); NaN/Inf audio cannot be processed")


def read_audio(path: str | Path, *, dtype: str = "float64", start: int = 0, frames: int = -1,
               always_2d: bool = False) -> tuple[np.ndarray, int]:
    """Samples in [-1, 1] (channels last; 1-D for mono unless ``always_2d``) and the rate.
    ``start``/``frames`` read a slice (``frames=-1``: to the end). NaN/Inf samples are a
    DataError naming the file and the sample."""
    _check_is_file(path)
    try:
        samples, rate = sf.read(str(path), start=start, frames=frames, dtype=dtype,
                                always_2d=always_2d)
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read audio file {path}: {exc}") from exc
    check_finite(samples, path, offset=start)
    return samples, rate


def read_16k(path: str | Path, *, dtype: str = "float64", start: int = 0,
             frames: int = -1) -> np.ndarray:
    """A file that must already be 16 kHz mono (a prepared corpus, an enhanced output):
    DataError saying what was found otherwise."""
    samples, rate = read_audio(path, dtype=dtype, start=start, frames=frames)
    if rate != SAMPLE_RATE or samples.ndim != 1:
        raise DataError(f"{path}: expected 16 kHz mono, found {rate} Hz, shape {samples.shape}")
    return samples


def read_16k_mono(path: str | Path, dtype: str = "float32") -> np.ndarray:
    """Any readable audio file as 16 kHz mono: channels averaged, resampled with soxr (HQ)."""
    data, rate = read_audio(path, dtype=dtype, always_2d=True)
    if data.shape[0] == 0:
        raise DataError(f"audio file {path} is empty")
    mono = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(mono, dtype=dtype)


def write_pcm16(path: Path, samples: np.ndarray) -> None:
    """int16 samples as a 16 kHz mono WAV with a plain 44-byte header (parents created).
    Not atomic: the corpus is written into a staging folder that is renamed when done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def write_wav_16k(path: str | Path, samples: np.ndarray) -> None:
    """Float samples as a 16 kHz mono PCM-16 WAV, atomically (clipped to [-1, 1]).
    Non-finite samples are a DataError and nothing is written."""
    check_finite(np.asarray(samples), f"{path} (samples to write)")
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(samples, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16",
                 format="WAV")
