"""Where a training run's files go (from :mod:`mbsnet.layout`), and how many steps an epoch
has: shared by the training loop and by what watches a run (:mod:`mbsnet.watch`), without
importing torch."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import layout


class RunPaths:
    """The files of one run directory (``{ablation}/seed{seed}`` of :mod:`mbsnet.layout`)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out = Path(out_dir)
        self.checkpoint_dir = self._file(layout.CHECKPOINT)
        self.last = self._file(layout.LAST_CHECKPOINT)
        self.best = self._file(layout.BEST_CHECKPOINT)
        self.live_log = self._file(layout.LIVE_LOG)
        self.model = self._file(layout.MODEL)
        self.log = self._file(layout.TRAIN_LOG)
        self.summary = self._file(layout.TRAIN_SUMMARY)
        self.tensorboard = self._file(layout.TENSORBOARD)

    def _file(self, pattern: str) -> Path:
        return self.out / layout.within(layout.RUN, pattern)

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete half-written files a killed run left (``.NAME.*.tmp`` beside model.pt and
        the checkpoints); one run writes this folder at a time, so none is in use."""
        stale = [p for folder in (self.out, self.checkpoint_dir) if folder.is_dir()
                 for p in folder.glob(".*.tmp")]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale


def steps_per_epoch(settings: Mapping[str, Any], n_items: int) -> int:
    """``training.steps_per_epoch``, or one pass over the training set when it is null."""
    return settings["steps_per_epoch"] or max(1, n_items // settings["batch_size"])
