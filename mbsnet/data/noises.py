"""Procedural stand-ins for the DEMAND noise environments (16 kHz, unit RMS).

Every generator takes the number of samples, a numpy Generator and the talker pool (babble
and speech-shaped noise are made from other synthetic talkers), so a noise is a pure
function of its random state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import fft, linalg, signal

from ..wavio import SAMPLE_RATE

# disjoint subsets, as VoiceBank-DEMAND uses different DEMAND environments for train and test
TRAIN_NOISES = ("car", "babble", "pink", "white", "hum")
TEST_NOISES = ("brown", "modulated_pink", "speech_shaped")


@dataclass
class TalkerPool:
    """Speech of the babble talkers: one 16 kHz float stream per talker."""

    talkers: list[np.ndarray]
    _lpc: np.ndarray | None = field(default=None, repr=False)

    def lpc(self, order: int = 16) -> np.ndarray:
        """All-pole coefficients ``a`` (a[0] = 1) of the pool's long-term spectral envelope."""
        if self._lpc is None:
            speech = np.concatenate([t / (np.std(t) + 1e-12) for t in self.talkers])
            r = np.array([speech[: len(speech) - k] @ speech[k:] for k in range(order + 1)])
            r[0] *= 1.0 + 1e-6  # white-noise correction keeps the solve well conditioned
            self._lpc = np.concatenate([[1.0], -linalg.solve_toeplitz(r[:-1], r[1:])])
        return self._lpc


def unit_rms(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.mean(x ** 2))


def colored(n: int, rng: np.random.Generator, exponent: float, f_min: float = 20.0) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown),
    flat below ``f_min`` Hz and without DC."""
    size = fft.next_fast_len(n, real=True)
    spectrum = fft.rfft(rng.standard_normal(size))
    freqs = fft.rfftfreq(size, 1 / SAMPLE_RATE)
    spectrum *= np.maximum(freqs, f_min) ** (-exponent / 2)
    spectrum[0] = 0.0
    return unit_rms(fft.irfft(spectrum, size)[:n])


def _white(n: int, rng: np.random.Generator, pool: TalkerPool) -> np.ndarray:
    return unit_rms(rng.standard_normal(n))


def _pink(n: int, rng: np.random.Generator, pool: TalkerPool) -> np.ndarray:
    return colored(n, rng, 1.0)


def _brown(n: int, rng: np.random.Generator, pool: TalkerPool) -> np.ndarray:
    return colored(n, rng, 2.0)


def _slow_gain_db(n: int, rng: np.random.Generator, step_seconds: float,
                  low_db: float, high_db: float) -> np.ndarray:
    """A level curve moving between random values every ``step_seconds``."""
    n_points = int(n / (step_seconds * SAMPLE_RATE)) + 2
    points = rng.uniform(low_db, high_db, n_points)
    return np.interp(np.arange(n), np.arange(n_points) * step_seconds * SAMPLE_RATE, points)


def _modulated_pink(n: int, rng: np.random.Generator, pool: TalkerPool) -> np.ndarray:
    """Pink noise whose level wanders by up to 15 dB (traffic, café)."""
    gain = 10 ** (_slow_gain_db(n, rng, rng.uniform(0.3, 1.0), -12.0, 3.0) / 20)
    return unit_rms(colored(n, rng, 1.0) * gain)


def _car(n: int, rng: np.random.Generator, pool: TalkerPool) -> np.ndarray:
    """Low-passed brown rumble plus engine harmonics with a slowly drifting speed."""
    sos = signal.butter(4, rng.uniform(200, 400), "low", fs=SAMPLE_RATE, output="sos")
    rumble = unit_rms(signal.sosfilt(sos, colored(n, rng, 2.0)))
    t = np.arange(n) / SAMPLE_RATE
    f0 = rng.uniform(25, 50) * (1 + 0.04 * np.sin(2 * np.pi * t / rng.uniform(2, 6)
                                                  + rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    engine = sum((np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 7)),
                 start=np.zeros(n))
    return unit_rms(rumble + 0.5 * unit_rms(engine))


def _hum(n: int, rng: np.random.Generator, pool: TalkerPool) -> np.ndarray:
    """Mains hum (50 or 60 Hz) with decaying, odd-heavy harmonics and a faint hiss."""
    mains = rng.choice([50.0, 60.0])
    t = np.arange(n) / SAMPLE_RATE
    hum = sum((1.0 if k % 2 else 0.4) / k * np.sin(2 * np.pi * k * mains * t
                                                 + rng.uniform(0, 2 * np.pi))
              for k in range(1, 11))
    return unit_rms(unit_rms(hum) + 0.01 * rng.standard_normal(n))


def _babble(n: int, rng: np.random.Generator, pool: TalkerPool) -> np.ndarray:
    """4-8 talkers of the pool at random offsets and levels within +-3 dB."""
    count = min(int(rng.integers(4, 9)), len(pool.talkers))
    chosen = rng.choice(len(pool.talkers), size=count, replace=False)
    out = np.zeros(n)
    for index in chosen:
        stream = pool.talkers[index]
        start = int(rng.integers(len(stream)))
        take = np.take(stream, np.arange(start, start + n), mode="wrap")
        out += take / np.std(stream) * 10 ** (rng.uniform(-3, 3) / 20)
    return unit_rms(out)


def _speech_shaped(n: int, rng: np.random.Generator, pool: TalkerPool) -> np.ndarray:
    """White noise through the long-term LPC envelope of the talker pool."""
    return unit_rms(signal.lfilter([1.0], pool.lpc(), rng.standard_normal(n)))


GENERATORS: dict[str, Callable[[int, np.random.Generator, TalkerPool], np.ndarray]] = {
    "car": _car, "brown": _brown, "modulated_pink": _modulated_pink, "babble": _babble,
    "speech_shaped": _speech_shaped, "hum": _hum, "pink": _pink, "white": _white,
}


def make_noise(kind: str, n: int, rng: np.random.Generator, pool: TalkerPool) -> np.ndarray:
    """``n`` samples (unit RMS, 16 kHz) of the noise type ``kind``."""
    try:
        generator = GENERATORS[kind]
    except KeyError:
        raise ValueError(f"unknown noise type {kind!r}; known: {', '.join(GENERATORS)}") from None
    return generator(n, rng, pool)

