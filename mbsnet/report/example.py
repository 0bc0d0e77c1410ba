"""The report's example utterance: its clean, noisy and enhanced audio, read from the tree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import layout
from ..data.manifest import example_utterance
from ..errors import DataError
from ..wavio import SAMPLE_RATE, read_audio
from .loading import Missing, Results, System, absent, log_hint


@dataclass
class Example:
    """One test utterance as heard by every system (``signals``: label -> wave or why not)."""

    utt_id: str | Missing
    signals: dict[str, np.ndarray | Missing]
    sample_rate: int


def example_audio(results: Results) -> Example:
    """The clean, noisy and enhanced versions of the report's example utterance
    (:func:`example_utterance`, the choice `mbsnet evaluate` makes too): each ablation's from
    the first scored seed with ``eval/example/{utt_id}.wav``, which every evaluation writes,
    else with ``eval/wavs/{utt_id}.wav`` (evaluation.save_wavs; trees evaluated before
    eval/example/ existed)."""
    manifest = results.manifest
    if isinstance(manifest, Missing):
        return Example(manifest, {}, SAMPLE_RATE)
    wanted = results.config.get("report", {}).get("example_utterance")
    try:
        utt = example_utterance(manifest, wanted, where=layout.MANIFEST)
    except DataError as exc:
        return Example(Missing(str(exc)), {}, SAMPLE_RATE)
    row = manifest[manifest["utt_id"] == utt].iloc[0]
    signals = {kind: _read_wav(Path(row[kind]), results.rel(Path(row[kind])), SAMPLE_RATE)
               for kind in ("clean", "noisy")}
    for system in results.ablations:
        signals[system.name] = _enhanced_example(results, system, utt)
    return Example(utt, signals, SAMPLE_RATE)


def _enhanced_example(results: Results, system: System, utt: str) -> np.ndarray | Missing:
    runs = system.scored_runs
    if not runs:
        return Missing(f"{system.name} was not scored")
    for pattern in (layout.EXAMPLE_WAV, layout.SAVED_WAV):
        for run in runs:
            path = run.path / layout.within(layout.RUN, pattern).format(utt_id=utt)
            if path.is_file():
                return _read_wav(path, results.rel(path), SAMPLE_RATE)
    run = runs[0]
    job = {"ablation": system.name, "seed": run.seed}
    return absent(f"no {layout.fill(layout.EXAMPLE_WAV, utt_id=utt, **job)}",
                  f"mbsnet evaluate writes it (--example {utt}); rerun the evaluation",
                  log_hint(results.root, "evaluate", **job))


def _read_wav(path: Path, shown: str, rate: int) -> np.ndarray | Missing:
    if not path.is_file():
        return Missing(f"no {shown}")
    try:
        wave, sr = read_audio(path, dtype="float32", always_2d=True)
    except DataError as exc:
        return Missing(f"{shown} is unreadable ({exc.__cause__})")
    if sr != rate:
        return Missing(f"{shown} is {sr} Hz, expected {rate}")
    return wave.mean(axis=1)
