"""Score (clean, degraded) pairs with every metric, one pair per worker process."""

from __future__ import annotations

import collections
import contextlib
import math
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..errors import DataError
from ..progress import progress as show_progress
from ..wavio import read_audio
from .composite import composite_scores
from .standard import pesq_wb_checked, si_sdr, stoi

METRICS = ("pesq_wb", "csig", "cbak", "covl", "ssnr", "stoi", "estoi", "si_sdr")

Audio = Union[np.ndarray, str, Path]


def _signal(audio: Audio, sr: int) -> np.ndarray:
    if isinstance(audio, (str, Path)):
        data, rate = read_audio(audio)
        if data.ndim != 1:
            raise DataError(f"{audio}: expected mono audio, got {data.shape[1]} channels")
        if rate != sr:
            raise DataError(f"{audio}: sample rate {rate} Hz, expected {sr} Hz")
        return data
    return np.asarray(audio, dtype=np.float64).reshape(-1)


def score_pair(clean: Audio, degraded: Audio, sr: int = 16000) -> dict[str, Any]:
    """Every metric of one pair (arrays in [-1, 1] or WAV paths), plus ``error``.

    A metric that fails is NaN and its reason is appended to ``error`` (empty when all is
    well); CSIG/CBAK/COVL are NaN whenever PESQ is. Signals of different lengths are
    truncated to the shorter one.
    """
    clean, degraded = _signal(clean, sr), _signal(degraded, sr)
    n = min(clean.size, degraded.size)
    clean, degraded = clean[:n], degraded[:n]
    errors: list[str] = []

    def attempt(name: str, fn, *args, **kwargs) -> float:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # recorded in the row, never dropped
            errors.append(f"{name}: {exc}" if str(exc) else f"{name}: {type(exc).__name__}")
            return math.nan

    if sr == 16000:
        pesq, reason = pesq_wb_checked(clean, degraded)
        if reason:
            errors.append(f"pesq_wb: {reason}")
    else:
        pesq = math.nan
        errors.append(f"pesq_wb: wide-band PESQ needs 16 kHz, got {sr} Hz")
    row: dict[str, Any] = {"pesq_wb": pesq}
    composites = attempt("composite", composite_scores, clean, degraded, pesq, sr)
    for key in ("csig", "cbak", "covl", "ssnr"):
        row[key] = composites[key] if isinstance(composites, dict) else math.nan
    row["stoi"] = attempt("stoi", stoi, clean, degraded, sr)
    row["estoi"] = attempt("estoi", stoi, clean, degraded, sr, extended=True)
    row["si_sdr"] = attempt("si_sdr", si_sdr, clean, degraded)
    row = {key: float(row[key]) for key in METRICS}
    row["error"] = "; ".join(errors)
    return row


def _score_task(args: tuple[Audio, Audio, int]) -> dict[str, Any]:
    return score_pair(*args)


# ---------------------------------------------------------------------------- parallel

_SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Workers get one BLAS/OpenMP thread each (the variables are set only while they
    are spawned, and only where the user has not set them)."""
    saved = {k: os.environ.get(k) for k in _SINGLE_THREAD_ENV}
    for key in _SINGLE_THREAD_ENV:
        os.environ.setdefault(key, "1")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)


def iter_scores(pairs: Iterable[tuple[Audio, Audio]], workers: int = 1, sr: int = 16000,
                progress: bool = True, total: int | None = None,
                desc: str = "scoring") -> Iterator[dict[str, Any]]:
    """Score pairs in input order. With ``workers > 1`` each pair is scored by one of that
    many worker processes; ``pairs`` is consumed lazily in this process (so a generator
    that enhances utterances overlaps with the scoring), with at most two pairs per
    worker waiting. Workers give the serial numbers up to the last bit or two (numpy's
    summation order depends on memory alignment and BLAS threads)."""
    if total is None and hasattr(pairs, "__len__"):
        total = len(pairs)  # type: ignore[arg-type]
    rows = _score_serial(pairs, sr) if workers <= 1 else _score_parallel(pairs, workers, sr)
    if progress:
        rows = show_progress(rows, total or 0, desc)
    yield from rows


def _score_serial(pairs: Iterable[tuple[Audio, Audio]], sr: int) -> Iterator[dict[str, Any]]:
    for clean, degraded in pairs:
        yield score_pair(clean, degraded, sr)


def _score_parallel(pairs: Iterable[tuple[Audio, Audio]], workers: int,
                    sr: int) -> Iterator[dict[str, Any]]:
    # spawn: safe with torch threads running in this process (callers' scripts need
    # the usual `if __name__ == "__main__":` guard).
    with _single_threaded_children():
        pool = multiprocessing.get_context("spawn").Pool(workers)
    try:
        pending: collections.deque = collections.deque()
        for clean, degraded in pairs:
            pending.append(pool.apply_async(_score_task, ((clean, degraded, sr),)))
            while len(pending) > 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
    finally:
        pool.terminate()
        pool.join()


def score_many(pairs: Iterable[tuple[Audio, Audio]], workers: int = 1, progress: bool = True,
               sr: int = 16000) -> list[dict[str, Any]]:
    """:func:`score_pair` for every pair, in order; the same numbers for any ``workers``."""
    return list(iter_scores(pairs, workers=workers, sr=sr, progress=progress))
