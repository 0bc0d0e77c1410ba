"""A scoring task that kills its own process on a marked pair (for the worker-death test;
a module of its own so that spawned worker processes can import it)."""

from __future__ import annotations

import os
import signal

import numpy as np

from mbsnet.metrics.score import _score_task

MARKER = 0.123456


def score_or_crash(args: tuple) -> dict:
    """``_score_task(args)``, or SIGSEGV when the degraded array starts with MARKER."""
    degraded = args[1]
    if isinstance(degraded, np.ndarray) and degraded[0] == MARKER:
        os.kill(os.getpid(), signal.SIGSEGV)
    return _score_task(args)
