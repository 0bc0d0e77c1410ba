"""Segmental SNR and the composite measures CSIG, CBAK, COVL (Hu & Loizou, 2008).

Follows the definitions of Loizou's ``compute_metrics.m`` as ported to Python for the
VoiceBank-DEMAND papers (CMGAN, SEMamba, ...): 30 ms Hann frames with a 7.5 ms hop,
LLR from 16th-order LPC (10th below 10 kHz), Klatt's weighted spectral slope on 25
critical bands, segmental SNR clipped to [-10, 35] dB, the lowest 95 % of the LLR and
WSS frames averaged, and the regressions with wide-band PESQ clipped to [1, 5].

Everything is vectorised over frames. One deliberate departure from the reference:
each frame's autocorrelation gets a tiny white-noise floor, so digitally silent frames
give a finite LLR (0 when both frames are silent) instead of NaN.
"""

from __future__ import annotations

import math

import numpy as np

ALPHA = 0.95                 # fraction of LLR/WSS frames kept (the lowest ones)
FRAME_MS = 30
SEGSNR_RANGE = (-10.0, 35.0)
# Added to every frame's zero-lag autocorrelation (signals in [-1, 1]); ~-200 dB, so it
# only matters where a frame is exactly zero.
LPC_FLOOR = 1e-20

# Critical-band centre frequencies and bandwidths (Hz) of the WSS measure.
CENTRE_HZ = np.array([
    50.0, 120.0, 190.0, 260.0, 330.0, 400.0, 470.0, 540.0, 617.372, 703.378, 798.717,
    904.128, 1020.38, 1148.30, 1288.72, 1442.54, 1610.70, 1794.16, 1993.93, 2211.08,
    2446.71, 2701.97, 2978.04, 3276.17, 3597.63])
BANDWIDTH_HZ = np.array([
    70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 77.3724, 86.0056, 95.3398, 105.411,
    116.256, 127.914, 140.423, 153.823, 168.154, 183.457, 199.776, 217.153, 235.631,
    255.255, 276.072, 298.126, 321.465, 346.136])
WSS_KMAX = 20.0              # Klatt's global-peak weight constant
WSS_KLOCMAX = 1.0            # Klatt's local-peak weight constant
WSS_SCALE = 32768.0          # the reference measures WSS on int16-scaled energies


def frame_geometry(sample_rate: int) -> tuple[int, int]:
    """(window length, hop) in samples: 30 ms frames, a quarter-window hop."""
    win = int(round(FRAME_MS * sample_rate / 1000))
    return win, win // 4


def hann(win: int) -> np.ndarray:
    """The window of compute_metrics.m: 0.5 (1 - cos(2 pi n / (win + 1))), n = 1..win."""
    n = np.arange(1, win + 1)
    return 0.5 * (1.0 - np.cos(2.0 * math.pi * n / (win + 1)))


def num_frames(length: int, sample_rate: int) -> int:
    win, hop = frame_geometry(sample_rate)
    return max(0, (length - win) // hop)


def frames(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Hann-windowed analysis frames [n_frames, win] (a copy)."""
    win, hop = frame_geometry(sample_rate)
    n = num_frames(len(x), sample_rate)
    view = np.lib.stride_tricks.sliding_window_view(x, win)[: n * hop: hop] if n else \
        np.empty((0, win))
    return view * hann(win)


def trimmed_mean(values: np.ndarray, keep: float = ALPHA) -> float:
    """Mean of the lowest ``round(keep * n)`` values (Python rounding, as the reference)."""
    if values.size == 0:
        return math.nan
    count = round(values.size * keep)
    return float(np.mean(np.sort(values)[:count])) if count else math.nan


# ---------------------------------------------------------------------------- LLR

def autocorrelation(frames_: np.ndarray, order: int) -> np.ndarray:
    """Lags 0..order of each frame: [n_frames, order + 1]."""
    win = frames_.shape[1]
    return np.stack([np.einsum("ij,ij->i", frames_[:, : win - k], frames_[:, k:])
                     for k in range(order + 1)], axis=1)


def levinson(r: np.ndarray) -> np.ndarray:
    """LPC polynomials [1, a1, ..., ap] from autocorrelations [n, p + 1], all frames at once."""
    n, p1 = r.shape
    a = np.zeros((n, p1))
    a[:, 0] = 1.0
    err = r[:, 0].copy()
    for i in range(1, p1):
        acc = np.einsum("ij,ij->i", a[:, :i], r[:, i:0:-1])
        k = -acc / err
        a[:, 1: i + 1] = a[:, 1: i + 1] + k[:, None] * a[:, i - 1:: -1][:, :i]
        err = err * (1.0 - k * k)
    return a


def toeplitz_form(a: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Row-wise a^T toeplitz(r) a, via the autocorrelation of ``a``."""
    weights = np.full(r.shape[1], 2.0)
    weights[0] = 1.0
    return np.einsum("ij,ij->i", autocorrelation(a, r.shape[1] - 1), r * weights)


def llr_frames(clean: np.ndarray, processed: np.ndarray, sample_rate: int) -> np.ndarray:
    """Log-likelihood ratio of every frame."""
    order = 10 if sample_rate < 10000 else 16
    r_clean = autocorrelation(frames(clean, sample_rate), order)
    r_proc = autocorrelation(frames(processed, sample_rate), order)
    r_clean[:, 0] += LPC_FLOOR
    r_proc[:, 0] += LPC_FLOOR
    a_clean, a_proc = levinson(r_clean), levinson(r_proc)
    return np.log(toeplitz_form(a_proc, r_clean) / toeplitz_form(a_clean, r_clean))


# ---------------------------------------------------------------------------- WSS

def critical_band_filters(sample_rate: int, n_bins: int) -> np.ndarray:
    """Gaussian critical-band weights [25, n_bins], equal area, zero below -30 dB."""
    nyquist = sample_rate // 2
    centre = np.floor(CENTRE_HZ / nyquist * n_bins)[:, None]
    width = (BANDWIDTH_HZ / nyquist * n_bins)[:, None]
    norm = np.log(BANDWIDTH_HZ[0]) - np.log(BANDWIDTH_HZ)[:, None]
    bins = np.arange(n_bins)[None, :]
    filters = np.exp(-11.0 * ((bins - centre) / width) ** 2 + norm)
    return np.where(filters > math.exp(-30.0 / (2.0 * 2.303)), filters, 0.0)


def _band_energies_db(frames_: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Filterbank output energies (dB) of each frame. The filters are sparse (~3 % of
    the weights are non-zero), so only their non-zero bins are gathered and summed."""
    n_fft = 2 * filters.shape[1]
    spectrum = np.fft.rfft(frames_ / WSS_SCALE, n_fft, axis=1)
    band, bins = np.nonzero(filters)  # row-major: grouped by band, bins ascending
    gathered = spectrum[:, bins]
    power = gathered.real ** 2 + gathered.imag ** 2
    starts = np.flatnonzero(np.r_[True, band[1:] != band[:-1]])
    energy = np.add.reduceat(power * filters[band, bins], starts, axis=1)
    return 10.0 * np.log10(np.maximum(energy, 1e-10))


def _nearest_peaks(energy: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """Per band, the energy at the nearest spectral peak: searched rightwards where the
    slope rises and leftwards where it falls (with the reference's index conventions)."""
    n = slope.shape[1]
    idx = np.arange(n)
    # first index >= i whose slope is not rising (n if none)
    stop_right = np.where(slope > 0, n, idx)
    right = np.minimum.accumulate(stop_right[:, ::-1], axis=1)[:, ::-1]
    # last index <= i whose slope is rising (-1 if none)
    stop_left = np.where(slope > 0, idx, -1)
    left = np.maximum.accumulate(stop_left, axis=1)
    pick = np.where(slope > 0, right - 1, left + 1)
    return np.take_along_axis(energy, pick, axis=1)


def _slope_weights(energy: np.ndarray, slope: np.ndarray) -> np.ndarray:
    below = energy[:, :-1]
    global_w = WSS_KMAX / (WSS_KMAX + energy.max(axis=1, keepdims=True) - below)
    local_w = WSS_KLOCMAX / (WSS_KLOCMAX + _nearest_peaks(energy, slope) - below)
    return global_w * local_w


def wss_frames(clean: np.ndarray, processed: np.ndarray, sample_rate: int) -> np.ndarray:
    """Weighted spectral slope distance of every frame."""
    win, _ = frame_geometry(sample_rate)
    n_fft = 2 ** int(math.ceil(math.log2(2 * win)))
    filters = critical_band_filters(sample_rate, n_fft // 2)
    e_clean = _band_energies_db(frames(clean, sample_rate), filters)
    e_proc = _band_energies_db(frames(processed, sample_rate), filters)
    s_clean, s_proc = np.diff(e_clean, axis=1), np.diff(e_proc, axis=1)
    weight = (_slope_weights(e_clean, s_clean) + _slope_weights(e_proc, s_proc)) / 2.0
    return np.sum(weight * (s_clean - s_proc) ** 2, axis=1) / np.sum(weight, axis=1)


# ---------------------------------------------------------------------------- segSNR

def segsnr_frames(clean: np.ndarray, processed: np.ndarray, sample_rate: int) -> np.ndarray:
    """Per-frame SNR in dB, clipped to SEGSNR_RANGE."""
    c = frames(clean, sample_rate)
    p = frames(processed, sample_rate)
    eps = np.finfo(np.float64).eps
    signal = np.sum(c * c, axis=1)
    noise = np.sum((c - p) ** 2, axis=1)
    return np.clip(10.0 * np.log10(signal / (noise + eps) + eps), *SEGSNR_RANGE)


def segmental_snr(clean: np.ndarray, processed: np.ndarray, sample_rate: int = 16000) -> float:
    """Mean segmental SNR (dB) over all frames; NaN when shorter than one frame."""
    values = segsnr_frames(_as_float(clean), _as_float(processed), sample_rate)
    return float(values.mean()) if values.size else math.nan


# ---------------------------------------------------------------------------- composites

def _as_float(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _clip_mos(value: float) -> float:
    return value if math.isnan(value) else min(5.0, max(1.0, value))


def composite_scores(clean: np.ndarray, processed: np.ndarray, pesq: float,
              sample_rate: int = 16000) -> dict[str, float]:
    """CSIG, CBAK, COVL and segmental SNR of equal-length signals in [-1, 1].

    ``pesq`` is the wide-band PESQ of the pair; NaN makes the three composites NaN.
    """
    clean, processed = _as_float(clean), _as_float(processed)
    if clean.shape != processed.shape:
        raise ValueError(f"signals differ in length: {clean.size} vs {processed.size}")
    wss = trimmed_mean(wss_frames(clean, processed, sample_rate))
    llr = trimmed_mean(llr_frames(clean, processed, sample_rate))
    seg = segsnr_frames(clean, processed, sample_rate)
    ssnr = float(seg.mean()) if seg.size else math.nan
    return {
        "csig": _clip_mos(3.093 - 1.029 * llr + 0.603 * pesq - 0.009 * wss),
        "cbak": _clip_mos(1.634 + 0.478 * pesq - 0.007 * wss + 0.063 * ssnr),
        "covl": _clip_mos(1.594 + 0.805 * pesq - 0.512 * llr - 0.007 * wss),
        "ssnr": ssnr,
    }
