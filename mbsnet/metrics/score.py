"""Score (clean, degraded) pairs with every metric, one pair per worker process."""

from __future__ import annotations

import collections
import contextlib
import math
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..progress import progress as show_progress
from ..wavio import check_finite, read_audio
from ..workers import die_with_parent
from .composite import composite_scores
from .registry import METRIC_SPECS
from .standard import pesq_wb_checked, si_sdr, stoi

#: the columns scoring writes, in order: the registry's names
METRICS = tuple(METRIC_SPECS)

Audio = np.ndarray | str | Path


def _signal(audio: Audio, sr: int, name: str) -> tuple[np.ndarray, str]:
    """The samples and how to name them in messages (the path, or e.g. 'degraded signal')."""
    if isinstance(audio, (str, Path)):
        data, rate = read_audio(audio)
        if data.ndim != 1:
            raise DataError(f"{audio}: expected mono audio, got {data.shape[1]} channels")
        if rate != sr:
            raise DataError(f"{audio}: sample rate {rate} Hz, expected {sr} Hz")
        where = str(audio)
    else:
        data, where = np.asarray(audio, dtype=np.float64).reshape(-1), f"{name} signal"
        check_finite(data, where)
    if data.size == 0:
        raise DataError(f"{where}: no samples")
    return data, where


def score_pair(clean: Audio, degraded: Audio, sr: int = 16000,
               trim: bool = False) -> dict[str, Any]:
    """Every metric of one pair (arrays in [-1, 1] or WAV paths), plus ``error``.

    A metric that is undefined for the pair (e.g. on a silent degraded signal) or fails is
    NaN and its reason is appended to ``error`` (empty when all is well); CSIG/CBAK/COVL
    are NaN whenever PESQ is. Input that cannot be scored raises DataError naming it:
    NaN/Inf samples, no samples, or lengths that differ (``trim``: score the overlap).
    """
    clean, clean_name = _signal(clean, sr, "clean")
    degraded, degraded_name = _signal(degraded, sr, "degraded")
    if clean.size != degraded.size and not trim:
        raise DataError(f"lengths differ: {clean_name} has {clean.size} samples, "
                        f"{degraded_name} {degraded.size}; score the overlap with --trim "
                        "(trim=True)")
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


def failed_row(reason: str) -> dict[str, Any]:
    """A row whose every metric is NaN, with the reason in ``error``."""
    return {**{key: math.nan for key in METRICS}, "error": reason}


def _score_task(args: tuple[Audio, Audio, int]) -> dict[str, Any]:
    """One pair for a pool or a loop: input problems become a failed row, not an exception."""
    try:
        return score_pair(*args)
    except DataError as exc:
        return failed_row(str(exc))


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
    """Score pairs in input order, one row per pair whatever happens to it. With
    ``workers > 1`` each pair is scored by one of that many worker processes; ``pairs`` is
    consumed lazily in this process (so a generator that enhances utterances overlaps with
    the scoring), with at most two pairs per worker waiting. Workers give the serial
    numbers up to the last bit or two (numpy's summation order depends on memory alignment
    and BLAS threads). A worker that dies (e.g. a crash in a metric's C code) costs only
    the row of its pair, which names the signal that killed it."""
    if total is None and hasattr(pairs, "__len__"):
        total = len(pairs)  # type: ignore[arg-type]
    rows = (map(_score_task, ((c, d, sr) for c, d in pairs)) if workers <= 1
            else _score_parallel(pairs, workers, sr, _score_task))
    if progress:
        rows = show_progress(rows, total or 0, desc)
    yield from rows


def _new_pool(workers: int) -> ProcessPoolExecutor:
    # spawn: safe with torch threads running in this process (callers' scripts need
    # the usual `if __name__ == "__main__":` guard).
    with _single_threaded_children():
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=die_with_parent)


def _score_parallel(pairs: Iterable[tuple[Audio, Audio]], workers: int, sr: int,
                    task: Callable[[tuple], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """``task`` of every (clean, degraded, sr) in worker processes, rows in input order.

    When a worker dies the pool breaks and every unfinished pair fails with it: those are
    scored again one at a time, each in a process of its own, so that only the pair that
    kills its process gets a failed row; a new pool takes the rest.
    """
    pool = _new_pool(workers)
    pending: collections.deque[tuple[tuple, Future]] = collections.deque()

    def next_row() -> dict[str, Any]:
        nonlocal pool
        args, future = pending.popleft()
        try:
            return future.result()
        except BrokenProcessPool:
            pool.shutdown(wait=True, cancel_futures=True)
            redone = [(a, _resolved(_isolated(task, a))) if _broken(f) else (a, f)
                      for a, f in pending]
            pending.clear()
            pending.extend(redone)
            pool = _new_pool(workers)
            return _isolated(task, args)

    try:
        for clean, degraded in pairs:
            args = (clean, degraded, sr)
            pending.append((args, pool.submit(task, args)))
            while len(pending) > 2 * workers:
                yield next_row()
        while pending:
            yield next_row()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _broken(future: Future) -> bool:
    return not future.done() or future.exception() is not None


def _resolved(row: dict[str, Any]) -> Future:
    future: Future = Future()
    future.set_result(row)
    return future


def _isolated(task: Callable[[tuple], dict[str, Any]], args: tuple) -> dict[str, Any]:
    """``task(args)`` in a process of its own: its row, or a failed row if the process died."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    with _single_threaded_children():
        process = context.Process(target=_run_and_send, args=(task, args, send), daemon=True)
        process.start()
    send.close()
    try:
        row = receive.recv()
    except EOFError:
        row = None
    process.join()
    if row is not None:
        return row
    code = process.exitcode
    how = (f"signal {signal.Signals(-code).name}" if code is not None and code < 0
           else f"exit status {code}")
    degraded = args[1] if isinstance(args[1], (str, Path)) else "an array"
    return failed_row(f"the scoring process died ({how}) on {degraded}")


def _run_and_send(task: Callable[[tuple], dict[str, Any]], args: tuple, send: Any) -> None:
    die_with_parent()
    send.send(task(args))
    send.close()


def score_many(pairs: Iterable[tuple[Audio, Audio]], workers: int = 1, progress: bool = True,
               sr: int = 16000) -> list[dict[str, Any]]:
    """:func:`score_pair` for every pair, in order; the same numbers for any ``workers``.
    A pair that cannot be scored gives a failed row (see :func:`iter_scores`)."""
    return list(iter_scores(pairs, workers=workers, sr=sr, progress=progress))
