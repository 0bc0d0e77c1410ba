"""The run's live log, checkpoint/train_log.jsonl: one JSON object a line, kept in step
with the checkpoint so that a resumed run logs every step once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class JsonlLog:
    """An append-only JSON-lines file, cut back to ``truncate_to`` bytes when opened (the
    size recorded in the checkpoint being resumed), so redone steps are not logged twice."""

    def __init__(self, path: Path, truncate_to: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as handle:
            handle.truncate(min(truncate_to, handle.seek(0, 2)))

    def write(self, obj: Mapping[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(obj, sort_keys=True) + "\n")

    def size(self) -> int:
        return self.path.stat().st_size


class NoLog:
    """The log of a process other than rank 0: nothing is written."""

    def write(self, obj: Mapping[str, Any]) -> None:
        pass

    def size(self) -> int:
        return 0
