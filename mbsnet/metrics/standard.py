"""Metrics computed by their reference packages (PESQ: ``pesq``, STOI/ESTOI: ``pystoi``)
and the scale-invariant SDR. Failures raise :class:`MetricFailure` with a readable reason."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pesq as _pesq
import pystoi

PESQ_RATE = 16000
PESQ_SEGMENT_SECONDS = 30.0
"""Longer signals are scored in segments of at most this length (see :func:`pesq_wb_strict`)."""
_EPS = np.finfo(np.float64).eps


class MetricFailure(Exception):
    """A metric is undefined for this pair; the message says why (it goes into `error`)."""


def _reason(exc: BaseException) -> str:
    """The message of an exception, decoding the bytes messages of the pesq package."""
    parts = [a.decode(errors="replace") if isinstance(a, bytes) else str(a) for a in exc.args]
    return "; ".join(parts) or type(exc).__name__


def _constant_state(signal: np.ndarray) -> str | None:
    """'digitally silent', 'constant' or None (a signal that varies)."""
    if np.ptp(signal) != 0:
        return None
    return "digitally silent" if not np.any(signal) else "constant"


def _pesq_once(clean: np.ndarray, degraded: np.ndarray) -> float:
    state = _constant_state(degraded)
    if state:
        # silence: the package would divide by a zero peak and feed NaNs to the C code;
        # a constant is silence after PESQ's DC-blocking input filter
        raise MetricFailure(f"No utterances detected (the degraded signal is {state})")
    try:
        return float(_pesq.pesq(PESQ_RATE, clean, degraded, "wb"))
    except _pesq.PesqError as exc:
        raise MetricFailure(_reason(exc)) from exc
    except ValueError as exc:  # NaN reaching the C code (e.g. non-finite input)
        raise MetricFailure(f"PESQ failed: {exc}") from exc


def pesq_segments(n_samples: int) -> list[slice]:
    """Equal consecutive segments of at most PESQ_SEGMENT_SECONDS covering the signal."""
    longest = int(PESQ_SEGMENT_SECONDS * PESQ_RATE)
    count = max(1, math.ceil(n_samples / longest))
    bounds = np.linspace(0, n_samples, count + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def pesq_wb_strict(clean: np.ndarray, degraded: np.ndarray) -> float:
    """Wide-band PESQ (MOS-LQO) of 16 kHz signals; raises MetricFailure on a PESQ error.

    The pesq package's C code (the ITU reference) keeps at most 50 utterances and crashes
    the process beyond them (a segmentation fault, from about two minutes of speech with
    pauses). Signals longer than PESQ_SEGMENT_SECONDS are therefore scored segment by
    segment and the scores averaged, weighted by segment length; a segment without speech
    is left out, as PESQ leaves out silence. This is mbsnet's convention for long signals,
    not part of ITU-T P.862, which is specified for short recordings (8-20 s).
    """
    clean = np.asarray(clean, dtype=np.float64)
    degraded = np.asarray(degraded, dtype=np.float64)
    segments = pesq_segments(clean.size)
    if len(segments) == 1:
        return _pesq_once(clean, degraded)
    scores, weights, reasons = [], [], []
    for part in segments:
        try:
            scores.append(_pesq_once(clean[part], degraded[part]))
            weights.append(part.stop - part.start)
        except MetricFailure as exc:
            reasons.append(str(exc))
    if not scores:
        raise MetricFailure(f"every {PESQ_SEGMENT_SECONDS:g} s segment failed: {reasons[0]}")
    return float(np.average(scores, weights=weights))


def pesq_wb_checked(clean: np.ndarray, degraded: np.ndarray) -> tuple[float, str]:
    """``(score, "")``, or ``(nan, reason)`` when PESQ fails (e.g. no utterances, too short)."""
    try:
        return pesq_wb_strict(clean, degraded), ""
    except MetricFailure as exc:
        return math.nan, str(exc)


def pesq_wb(clean: np.ndarray, degraded: np.ndarray) -> float:
    """Wide-band PESQ of 16 kHz signals in [-1, 1]; NaN when PESQ fails."""
    return pesq_wb_checked(clean, degraded)[0]


def _check_not_constant(degraded: np.ndarray, metric: str) -> None:
    state = _constant_state(degraded)
    if state:
        raise MetricFailure(f"{metric} undefined: the degraded signal is {state}")


def stoi(clean: np.ndarray, degraded: np.ndarray, sample_rate: int = 16000,
         extended: bool = False) -> float:
    """STOI (or ESTOI with ``extended``). pystoi's silent fallback value (1e-5 when too few
    frames remain after silence removal) becomes a MetricFailure instead, and so does a
    silent or constant degraded signal (its correlation with the reference is 0/0)."""
    if not np.any(clean):
        raise MetricFailure("STOI undefined: the reference is digitally silent")
    _check_not_constant(np.asarray(degraded), "ESTOI" if extended else "STOI")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(pystoi.stoi(np.asarray(clean, dtype=np.float64),
                                  np.asarray(degraded, dtype=np.float64),
                                  sample_rate, extended=extended))
    for w in caught:
        if "Not enough STFT frames" in str(w.message):
            raise MetricFailure("too short for STOI after removing silent frames")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return value


def si_sdr(clean: np.ndarray, degraded: np.ndarray) -> float:
    """Scale-invariant SDR (dB): zero-mean signals, target = projection onto the reference."""
    ref = np.asarray(clean, dtype=np.float64)
    est = np.asarray(degraded, dtype=np.float64)
    _check_not_constant(est, "SI-SDR")
    ref = ref - ref.mean()
    est = est - est.mean()
    # np.sum (pairwise, single-threaded) rather than BLAS dot products, whose result
    # depends on the thread count: worker processes must give the serial numbers.
    ref_energy = float(np.sum(ref * ref))
    if ref_energy == 0.0:
        raise MetricFailure("SI-SDR undefined: the reference is constant")
    target = (float(np.sum(ref * est)) / ref_energy) * ref
    residual = est - target
    return float(10.0 * np.log10((np.sum(target * target) + _EPS)
                                 / (np.sum(residual * residual) + _EPS)))
