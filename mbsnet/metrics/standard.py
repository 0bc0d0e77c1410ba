"""Metrics computed by their reference packages (PESQ: ``pesq``, STOI/ESTOI: ``pystoi``)
and the scale-invariant SDR. Failures raise :class:`MetricFailure` with a readable reason."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pesq as _pesq
import pystoi

PESQ_RATE = 16000
_EPS = np.finfo(np.float64).eps


class MetricFailure(Exception):
    """A metric is undefined for this pair; the message says why (it goes into `error`)."""


def _reason(exc: BaseException) -> str:
    """The message of an exception, decoding the bytes messages of the pesq package."""
    parts = [a.decode(errors="replace") if isinstance(a, bytes) else str(a) for a in exc.args]
    return "; ".join(parts) or type(exc).__name__


def pesq_wb_strict(clean: np.ndarray, degraded: np.ndarray) -> float:
    """Wide-band PESQ (MOS-LQO) of 16 kHz signals; raises MetricFailure on a PESQ error."""
    clean = np.asarray(clean, dtype=np.float64)
    degraded = np.asarray(degraded, dtype=np.float64)
    if not np.any(degraded):
        # the package would divide by a zero peak and feed NaNs to the C code
        raise MetricFailure("No utterances detected (the degraded signal is digitally silent)")
    try:
        return float(_pesq.pesq(PESQ_RATE, clean, degraded, "wb"))
    except _pesq.PesqError as exc:
        raise MetricFailure(_reason(exc)) from exc
    except ValueError as exc:  # NaN reaching the C code (e.g. non-finite input)
        raise MetricFailure(f"PESQ failed: {exc}") from exc


def pesq_wb_checked(clean: np.ndarray, degraded: np.ndarray) -> tuple[float, str]:
    """``(score, "")``, or ``(nan, reason)`` when PESQ fails (e.g. no utterances, too short)."""
    try:
        return pesq_wb_strict(clean, degraded), ""
    except MetricFailure as exc:
        return math.nan, str(exc)


def pesq_wb(clean: np.ndarray, degraded: np.ndarray) -> float:
    """Wide-band PESQ of 16 kHz signals in [-1, 1]; NaN when PESQ fails."""
    return pesq_wb_checked(clean, degraded)[0]


def stoi(clean: np.ndarray, degraded: np.ndarray, sample_rate: int = 16000,
         extended: bool = False) -> float:
    """STOI (or ESTOI with ``extended``). pystoi's silent fallback value (1e-5 when too few
    frames remain after silence removal) becomes a MetricFailure instead."""
    if not np.any(clean):
        raise MetricFailure("STOI undefined: the reference is digitally silent")
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
