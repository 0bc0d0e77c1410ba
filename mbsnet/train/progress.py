"""What a training tells the person watching it: a tqdm bar per epoch on a terminal, else
plain lines through the ``logging`` module (the command line shows INFO on stdout)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Mapping
from typing import Any

from tqdm import tqdm

_log = logging.getLogger(__name__)


class Progress:
    """A tqdm bar per epoch on a terminal; plain lines every ``every`` steps otherwise;
    nothing when ``quiet`` (the processes other than rank 0). Every line starts with
    ``[label]``."""

    def __init__(self, label: str, steps: int, every: int, quiet: bool = False) -> None:
        self.label, self.steps, self.every = label, steps, every
        self.tty = sys.stderr.isatty() and not quiet
        self.quiet = quiet
        self.bar: tqdm | None = None

    def note(self, message: str) -> None:
        """Log ``message`` at INFO."""
        self._emit(logging.INFO, message)

    def warn(self, message: str) -> None:
        """Log ``message`` at WARNING."""
        self._emit(logging.WARNING, message)

    def _emit(self, level: int, message: str) -> None:
        if self.quiet:
            return
        # With a bar on the terminal: clear it for the line, then redraw it below.
        with (tqdm.external_write_mode() if self.bar is not None
              else contextlib.nullcontext()):
            _log.log(level, f"[{self.label}] {message}")

    def start_epoch(self, epoch: int, epochs: int, done: int) -> None:
        self.epoch_text = f"epoch {epoch + 1}/{epochs}"
        self.done = done
        if self.tty:
            self.bar = tqdm(total=self.steps, initial=done, desc=self.epoch_text,
                            leave=False, dynamic_ncols=True)

    def step(self, line: Mapping[str, Any]) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix(loss=fmt(line["gen_loss"]), lr=f"{line['lr']:.2e}",
                                 refresh=False)
            self.bar.update()
        elif line["skipped"] or self.done % self.every == 0 or self.done == self.steps:
            status = f" SKIPPED: {line['reason']}" if line["skipped"] else ""
            self.note(f"{self.epoch_text} step {self.done}/{self.steps} gen_loss "
                      f"{fmt(line['gen_loss'])} disc_loss {fmt(line['disc_loss'])} lr "
                      f"{line['lr']:.2e} {line['step_seconds']:.2f} s/step{status}")

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def epoch_line(self, line: Mapping[str, Any]) -> None:
        self.note(f"{self.epoch_text} done in {line['seconds']:.1f} s: train loss "
                  f"{fmt(line['gen_loss'])}, val loss {fmt(line['val_loss'])}, val PESQ "
                  f"{fmt(line['val_pesq'])}, skipped {line['skipped_steps']}, "
                  f"discriminator skipped {line['disc_skipped']}")


def fmt(value: float | None) -> str:
    """A loss or score for the progress lines: 4 decimals, or n/a."""
    return "n/a" if value is None else f"{value:.4f}"
