"""PESQ for a batch, computed in parallel worker processes: the MetricGAN discriminator's
targets during training, and the validation score."""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
from collections.abc import Sequence

import numpy as np
import torch

from .losses import normalised_pesq


def _pesq_pair(pair: tuple[np.ndarray, np.ndarray]) -> float:
    from ..metrics import pesq_wb  # imported in the worker process

    try:
        return float(pesq_wb(*pair))
    except Exception:  # noqa: BLE001 - any PESQ failure only means "no target", as in the recipe
        return float("nan")


class PesqScorer:
    """Wide-band PESQ of (reference, degraded) pairs; ``workers=0`` scores in-process.

    The worker pool (spawned, so it never inherits the trainer's threads or CUDA state)
    starts on first use and lives until :meth:`close`. Usable as a context manager.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: multiprocessing.pool.Pool | None = None

    def scores(self, references: Sequence[np.ndarray],
               degraded: Sequence[np.ndarray]) -> np.ndarray:
        """PESQ of each pair, NaN where PESQ fails (e.g. silence)."""
        pairs = [(np.asarray(r, dtype=np.float32), np.asarray(d, dtype=np.float32))
                 for r, d in zip(references, degraded, strict=True)]
        if self.workers == 0 or len(pairs) <= 1:
            return np.array([_pesq_pair(p) for p in pairs], dtype=np.float64)
        if self._pool is None:
            self._pool = multiprocessing.get_context("spawn").Pool(self.workers)
        return np.array(self._pool.map(_pesq_pair, pairs), dtype=np.float64)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> PesqScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def metric_targets(scorer: PesqScorer, clean: torch.Tensor, est: torch.Tensor,
                   noisy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Normalised PESQ(clean, est) and PESQ(est, noisy) for a batch of waveforms [B, S],
    as float32 tensors on ``clean``'s device; None if any PESQ failed (the recipe then
    skips the discriminator step)."""
    clean_np, est_np, noisy_np = (list(t.detach().float().cpu().numpy())
                                  for t in (clean, est, noisy))
    scores = scorer.scores(clean_np + est_np, est_np + noisy_np)
    if not np.isfinite(scores).all():
        return None
    targets = normalised_pesq(torch.as_tensor(scores, dtype=torch.float32, device=clean.device))
    batch = clean.shape[0]
    return targets[:batch], targets[batch:]
