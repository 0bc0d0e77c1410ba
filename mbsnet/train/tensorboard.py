"""TensorBoard event files of a training run (``training.tensorboard``), in
``OUT/tensorboard/``, so that ``tensorboard --logdir results`` shows every ablation and seed
side by side while they train.

Per step: ``train/gen_loss``, ``train/disc_loss`` (when the discriminator trained),
``train/lr``, ``train/step_seconds`` and ``train/skipped`` (1 for a step skipped as
non-finite); per epoch, at the step that ended it: ``epoch/train_loss``, ``epoch/val_loss``,
``epoch/val_pesq``, ``epoch/skipped_steps``, ``epoch/peak_memory_mb`` and ``epoch/seconds``.
A resumed run tells TensorBoard to drop the events written after its checkpoint's step
(``purge_step``), so redone steps are not shown twice.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError

STEP_SCALARS = ("gen_loss", "disc_loss", "lr", "step_seconds")
EPOCH_SCALARS = {"gen_loss": "train_loss", "val_loss": "val_loss", "val_pesq": "val_pesq",
                 "skipped_steps": "skipped_steps", "peak_memory_mb": "peak_memory_mb",
                 "seconds": "seconds"}


def available() -> bool:
    """Whether the ``tensorboard`` package (which torch's writer needs) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def wanted(settings: Mapping[str, Any]) -> bool:
    """``training.tensorboard``: True/False as set; absent or null: whether it is installed.
    True without the package is a ConfigError naming the key and the install command."""
    setting = settings.get("tensorboard")
    if setting is None:
        return available()
    if setting and not available():
        raise ConfigError("training.tensorboard is true but the tensorboard package is not "
                          "installed: pip install tensorboard (or set training.tensorboard: "
                          "false)")
    return bool(setting)


class TensorboardLog:
    """The event files of one run under ``log_dir``; ``resume_step``: the global step of
    the checkpoint a resumed run starts from (later events of an earlier session are
    dropped), None for a new run."""

    def __init__(self, log_dir: Path, resume_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(
            str(log_dir), purge_step=None if resume_step is None else resume_step + 1)

    def step(self, line: Mapping[str, Any]) -> None:
        """The scalars of one step line of train_log.jsonl."""
        for key in STEP_SCALARS:
            if line.get(key) is not None:
                self.writer.add_scalar(f"train/{key}", line[key], line["step"])
        self.writer.add_scalar("train/skipped", float(line["skipped"]), line["step"])

    def epoch(self, line: Mapping[str, Any], global_step: int) -> None:
        """The scalars of one epoch line, at the run's step count when the epoch ended."""
        for key, name in EPOCH_SCALARS.items():
            if line.get(key) is not None:
                self.writer.add_scalar(f"epoch/{name}", line[key], global_step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
