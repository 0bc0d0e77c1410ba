"""Training: the BSRNN/MetricGAN recipe for any ablation, resumable and NaN-safe.

- :mod:`.losses` the generator and discriminator losses
- :mod:`.discriminator_targets` batch PESQ in worker processes
- :mod:`.gan` :class:`EnhancementGan`: models, optimizers, schedulers, one training step
- :mod:`.batches` the batches of every step, read by DataLoader worker processes
- :mod:`.distributed` one run as several data-parallel processes (torchrun, srun)
- :mod:`.microbatches` a batch computed in pieces giving the whole batch's step
- :mod:`.numerics` deterministic kernels and TF32 on CUDA
- :mod:`.checkpoint` full checkpoints and RNG states
- :mod:`.loop` :func:`train`: a whole run with validation, logging and outputs
- :mod:`.records` the run's live JSON-lines log
- :mod:`.progress` the progress bar and lines, through ``logging``
- :mod:`.signals` SIGTERM and SIGINT stop a run at a step boundary, after a checkpoint

Submodules load on first use (PESQ worker processes import this package, and need
none of it).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"EnhancementGan": "gan", "train": "loop"}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
