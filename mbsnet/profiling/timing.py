"""Wall-clock timing: median training step time and the inference real-time factor."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from ..audio import SAMPLE_RATE, istft, stft


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so a timer measures it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` (warm up before calling this)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    return statistics.median(timed(fn, device) for _ in range(repeats))


def inference_rtf(model: nn.Module, seconds: float, device: torch.device,
                  runs: int = 3, warmup: int = 1) -> float:
    """Real-time factor of enhancing one ``seconds``-long utterance (STFT, model, iSTFT;
    batch 1, eval mode, no autograd): median processing time / audio duration.

    ``torch.no_grad`` rather than ``inference_mode``, as in ``mbsnet enhance``: a scan that
    works in helper threads may update its own buffers there."""
    samples = round(seconds * SAMPLE_RATE)
    wave = torch.randn(1, samples, device=device) * 0.1

    def enhance() -> torch.Tensor:
        with torch.no_grad():
            return istft(model(stft(wave)), length=samples)

    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            enhance()
        return median_seconds(enhance, device, runs) / seconds
    finally:
        model.train(was_training)
