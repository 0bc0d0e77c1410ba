"""Full training checkpoints: everything a rerun needs to continue where the run stopped.

On the CPU the continuation is bit-identical to an uninterrupted run; on CUDA only as far
as the run's kernels are deterministic (``training.deterministic``, README "GPUs").

A checkpoint holds the :class:`~.gan.EnhancementGan`'s state (both models, optimizers and
schedulers) under ``trainer``, the torch / numpy / python RNG states, the run's progress
counters (:class:`RunState`) and an identity string (the settings and data the run was
started with). It is written atomically with ``torch.save`` and read back with
``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import MbsnetError

FORMAT_VERSION = 1


@dataclasses.dataclass
class RunState:
    """Where a run is and what it has counted so far. ``epoch`` / ``step`` is the next
    step to run (step counts within the epoch); the ``epoch_*`` fields accumulate the
    current epoch's training statistics; ``train_seconds`` is the time the
    ``timed_steps`` training steps took (for the throughput). All of it is global: the
    same on every process of a data-parallel run, so a run resumes with any number."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best_epoch: int | None = None
    best_score: float | None = None
    skipped_steps: int = 0
    disc_skipped_steps: int = 0
    bad_streak: int = 0
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    epoch_skipped: int = 0
    epoch_disc_skipped: int = 0
    wall_seconds: float = 0.0
    peak_memory_mb: float = 0.0
    resumed: int = 0
    log_bytes: int = 0
    train_seconds: float = 0.0
    timed_steps: int = 0

    def start_epoch(self) -> None:
        """Reset the per-epoch statistics."""
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
        self.epoch_skipped = self.epoch_disc_skipped = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The torch, numpy and python RNG states, and the CUDA RNG state of ``device`` when it
    is a CUDA device (the run's own: other visible GPUs are not the run's, and a resumed run
    may see fewer), as tensors and plain values (loadable with ``weights_only=True``)."""
    # the global RandomState is an MT19937, whose legacy state is this tuple
    kind, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float],
                                              np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore the states saved by :func:`rng_state`; the saved CUDA state goes to
    ``device``, the device the run continues on, whichever it was saved from."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32),
                         np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):  # older checkpoints: one per visible device, run on 0
        cuda = cuda[0] if cuda else None
    if cuda is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def save_checkpoint(path: str | Path, *, identity: str, trainer_state: dict[str, Any],
                    run: RunState, device: torch.device | None = None) -> None:
    """Write a full checkpoint atomically (the RNG states, ``device``'s included, are taken
    now). ``trainer_state`` is :meth:`.gan.EnhancementGan.state_dict`, stored under
    ``trainer`` (the key every checkpoint has, so that saved runs resume)."""
    payload = {"format": FORMAT_VERSION, "identity": identity, "trainer": trainer_state,
               "rng": rng_state(device), "run": run.as_dict()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; ``run`` becomes a RunState.

    Raises MbsnetError naming the file if it cannot be read.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MbsnetError(f"checkpoint {path} cannot be read ({detail}); delete it to start "
                          "the training from scratch") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise MbsnetError(f"checkpoint {path} is not an mbsnet training checkpoint of format "
                          f"{FORMAT_VERSION}; delete it to start the training from scratch")
    payload["run"] = RunState.from_dict(payload["run"])
    return payload
