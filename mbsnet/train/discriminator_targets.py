"""PESQ for a batch, computed in parallel worker processes: the MetricGAN discriminator's
targets during training, and the validation score.

The workers import this module, so it imports no torch at module level (they start in
a fraction of the time).
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

import numpy as np

from ..workers import exit_with

if TYPE_CHECKING:
    import torch


def _pesq_pair(pair: tuple[np.ndarray, np.ndarray]) -> float:
    from ..metrics import pesq_wb  # imported in the worker process

    try:
        return float(pesq_wb(*pair))
    except Exception:  # noqa: BLE001 - any PESQ failure only means "no target", as in the recipe
        return float("nan")


class PesqScorer:
    """Wide-band PESQ of (reference, degraded) pairs; ``workers=0`` scores in-process.

    The worker pool starts on first use and lives until :meth:`close`; usable as a context
    manager. Workers are forked from a clean fork server (never from the trainer, whose
    threads and CUDA state must not be inherited) that has imported PESQ once.
    If a worker dies (e.g. SLURM signals every process of the job), the batch counts as
    failed instead of hanging, and the next call starts a new pool. The workers end with
    the process that started them, even when it is killed.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def scores(self, references: Sequence[np.ndarray],
               degraded: Sequence[np.ndarray]) -> np.ndarray:
        """PESQ of each pair, NaN where PESQ fails (e.g. silence)."""
        pairs = [(np.asarray(r, dtype=np.float32), np.asarray(d, dtype=np.float32))
                 for r, d in zip(references, degraded, strict=True)]
        if self.workers == 0 or len(pairs) <= 1:
            return np.array([_pesq_pair(p) for p in pairs], dtype=np.float64)
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__, "mbsnet.metrics"])
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context,
                                             initializer=exit_with, initargs=(os.getpid(),))
        chunk = math.ceil(len(pairs) / self.workers)
        try:
            return np.array(list(self._pool.map(_pesq_pair, pairs, chunksize=chunk)),
                            dtype=np.float64)
        except BrokenProcessPool:
            self.close()
            return np.full(len(pairs), np.nan)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> PesqScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def normalised_pesq(pesq: np.ndarray) -> np.ndarray:
    """Wide-band PESQ (-0.5 .. 4.64) mapped to the discriminator's target range ~0 .. 1."""
    return (pesq + 0.5) / 5.0


def metric_targets(scorer: PesqScorer, clean: torch.Tensor, est: torch.Tensor,
                   noisy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Normalised PESQ(clean, est) and PESQ(est, noisy) for a batch of waveforms [B, S],
    as float32 tensors on ``clean``'s device; None if any PESQ failed (the recipe then
    skips the discriminator step)."""
    import torch

    clean_np, est_np, noisy_np = (list(t.detach().float().cpu().numpy())
                                  for t in (clean, est, noisy))
    scores = scorer.scores(clean_np + est_np, est_np + noisy_np)
    if not np.isfinite(scores).all():
        return None
    targets = torch.as_tensor(normalised_pesq(scores), dtype=torch.float32, device=clean.device)
    batch = clean.shape[0]
    return targets[:batch], targets[batch:]
