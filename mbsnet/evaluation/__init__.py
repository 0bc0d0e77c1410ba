"""Evaluation: a trained model applied to whole utterances, and the scores of a corpus
split. :mod:`.enhance` runs the model on waveforms and on users' audio files (training's
validation uses it too); :mod:`.evaluate` enhances a split of the prepared corpus, or takes
its noisy input, and writes eval/metrics.tsv and summary.json. Its function ``evaluate`` is
imported from that module (``mbsnet.evaluation.evaluate`` names the module, so the package
cannot export the function under the same name). Submodules load on first use: training
imports the enhancement without the scoring.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "audio_files": "enhance", "enhance_files": "enhance", "enhance_waveform": "enhance",
    "enhance_with_spectrum": "enhance", "model_device": "enhance", "pad_hop": "enhance",
    "EXAMPLE_DIR": "evaluate", "NOISY": "evaluate", "evaluate_saved": "evaluate",
    "summarise": "evaluate", "summary_line": "evaluate",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
