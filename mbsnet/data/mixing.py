"""Active speech level and mixing at a given SNR.

The active level is a simple ITU-T P.56-like frame-energy gate: a frame counts as active
when its power is at most :data:`MARGIN_DB` below the mean power of all frames at least as
loud as it, and the active level is the mean power of the active frames. The SNR of a mixture
is the active clean-speech power over the mean power of the whole noise signal.
"""

from __future__ import annotations

import numpy as np

FRAME_SECONDS = 0.01
MARGIN_DB = 15.9  # P.56's margin between the active level and the activity threshold
PEAK = 0.99  # mixtures are scaled down (clean with them) so that no sample exceeds this


def active_power(x: np.ndarray, sample_rate: int = 16000) -> float:
    """Mean power of the active frames of ``x`` (linear; 0.0 for a silent signal)."""
    x = np.asarray(x, dtype=np.float64)
    frame = max(1, int(round(FRAME_SECONDS * sample_rate)))
    n_frames = len(x) // frame
    if n_frames == 0:
        return float(np.mean(x ** 2)) if len(x) else 0.0
    powers = np.mean(x[: n_frames * frame].reshape(n_frames, frame) ** 2, axis=1)
    loud_first = np.sort(powers)[::-1]
    if loud_first[0] <= 0.0:
        return 0.0
    # mean power of the k loudest frames, for every k
    running_mean = np.cumsum(loud_first) / np.arange(1, n_frames + 1)
    within_margin = running_mean <= loud_first * 10 ** (MARGIN_DB / 10)
    k = int(np.flatnonzero(within_margin)[-1]) + 1  # the k=1 case always qualifies
    return float(running_mean[k - 1])


def active_level_db(x: np.ndarray, sample_rate: int = 16000) -> float:
    """Active speech level in dB relative to full scale (a full-scale square wave: 0 dB)."""
    power = active_power(x, sample_rate)
    return 10 * np.log10(power) if power > 0 else -np.inf


def snr_db(clean: np.ndarray, noisy: np.ndarray, sample_rate: int = 16000) -> float:
    """SNR of a mixture in dB: active power of ``clean`` over the power of ``noisy - clean``."""
    clean = np.asarray(clean, dtype=np.float64)
    noise = np.asarray(noisy, dtype=np.float64) - clean
    return float(10 * np.log10(active_power(clean, sample_rate) / np.mean(noise ** 2)))


def scale_to_level(x: np.ndarray, level_db: float, sample_rate: int = 16000) -> np.ndarray:
    """``x`` scaled so that its active level is ``level_db`` dB full scale."""
    power = active_power(x, sample_rate)
    if power <= 0:
        raise ValueError("cannot set the level of a silent signal")
    return x * np.sqrt(10 ** (level_db / 10) / power)


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr: float, sample_rate: int = 16000,
               peak: float = PEAK) -> tuple[np.ndarray, np.ndarray]:
    """Add ``noise`` (same length) to ``clean`` at ``snr`` dB; return ``(clean, noisy)``.

    If the mixture (or the clean signal) would exceed ``peak``, both are scaled by the
    same factor, which leaves the SNR unchanged.
    """
    if len(noise) != len(clean):
        raise ValueError(f"noise has {len(noise)} samples, clean {len(clean)}")
    speech = active_power(clean, sample_rate)
    noise_power = float(np.mean(np.asarray(noise, dtype=np.float64) ** 2))
    if speech <= 0 or noise_power <= 0:
        raise ValueError("cannot mix a silent signal at a given SNR")
    noisy = clean + noise * np.sqrt(speech / (noise_power * 10 ** (snr / 10)))
    loudest = max(np.max(np.abs(noisy)), np.max(np.abs(clean)))
    if loudest > peak:
        clean, noisy = clean * (peak / loudest), noisy * (peak / loudest)
    return clean, noisy


def mix_pcm16(clean: np.ndarray, noise: np.ndarray, snr: float,
              sample_rate: int = 16000) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mix_at_snr` for signals to be stored as PCM-16: int16 ``(clean, noisy)``.

    The noise is scaled against the clean signal *as stored* (already rounded, and scaled
    down first if the mix would clip), so the SNR measured on the files misses ``snr`` only
    by the rounding of the noise: the frame gate of the active level is not continuous, and
    rounding the clean signal after mixing can move it by a few hundredths of a dB.
    """
    headroom_clean, _ = mix_at_snr(from_pcm16(to_pcm16(clean)), noise, snr, sample_rate)
    stored = from_pcm16(to_pcm16(headroom_clean))
    stored, noisy = mix_at_snr(stored, noise, snr, sample_rate, peak=1.0)
    return to_pcm16(stored), to_pcm16(noisy)


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1) rounded to int16 (clipped at full scale)."""
    scaled = np.round(np.asarray(x, dtype=np.float64) * 32768.0)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def from_pcm16(x: np.ndarray) -> np.ndarray:
    """int16 samples as float64 in [-1, 1)."""
    return np.asarray(x, dtype=np.float64) / 32768.0
