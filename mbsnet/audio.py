"""Signal constants and the STFT used everywhere (512-point Hann, hop 128, 16 kHz)."""

from __future__ import annotations

import torch

from .wavio import SAMPLE_RATE

__all__ = ["HOP", "N_BINS", "N_FFT", "SAMPLE_RATE", "istft", "stft"]

N_FFT = 512
HOP = 128
N_BINS = N_FFT // 2 + 1


def _window(device: torch.device) -> torch.Tensor:
    return torch.hann_window(N_FFT, device=device)


def stft(wave: torch.Tensor) -> torch.Tensor:
    """[B, samples] float -> complex STFT [B, N_BINS, frames] (float32, centred)."""
    wave = wave.float()
    return torch.stft(wave, N_FFT, HOP, window=_window(wave.device), onesided=True,
                      return_complex=True)


def istft(spec: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """Inverse of :func:`stft`: complex [B, N_BINS, frames] -> [B, samples]."""
    return torch.istft(spec, N_FFT, HOP, window=_window(spec.device), onesided=True,
                       length=length)
