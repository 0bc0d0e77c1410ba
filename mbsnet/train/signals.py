"""SIGTERM and SIGINT during a training: recorded, so the run stops at a step boundary
right after a checkpoint instead of dying mid-step."""

from __future__ import annotations

import signal
import threading
from typing import Any


class TerminationRequest:
    """Records a SIGTERM (SLURM time limit, a cancelled job, an interrupted Snakemake) or a
    SIGINT (Ctrl-C) instead of dying at once, so the run can checkpoint at the next step
    boundary. Only in the main thread (elsewhere Python cannot install handlers, and the
    signals keep their handlers)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._previous: dict[int, Any] = {}

    def _record(self, signum: int, _frame: Any) -> None:
        self.signal = signal.Signals(signum)

    def __enter__(self) -> TerminationRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._record) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
