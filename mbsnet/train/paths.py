"""Where a training run's files go, and how many steps an epoch has: shared by the training
loop and by what watches a run (:mod:`mbsnet.watch`), without importing torch."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class RunPaths:
    """The files of one run directory."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out = Path(out_dir)
        self.checkpoint_dir = self.out / "checkpoint"
        self.last = self.checkpoint_dir / "last.pt"
        self.best = self.checkpoint_dir / "best.pt"
        self.live_log = self.checkpoint_dir / "train_log.jsonl"
        self.model = self.out / "model.pt"
        self.log = self.out / "train_log.jsonl"
        self.summary = self.out / "train_summary.json"
        self.tensorboard = self.out / "tensorboard"

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
