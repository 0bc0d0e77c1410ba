"""Enhance a split of the prepared corpus and score it: eval/metrics.tsv and summary.json
(formats in docs/results.md). Without a model the unprocessed noisy input is scored."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .atomic import atomic_dir, atomic_path, write_json
from .data.manifest import read_split
from .device import describe as describe_device
from .enhance import enhance_waveform, model_device
from .metrics import METRICS, iter_scores
from .stats import t_half_width
from .wavio import read_16k, write_wav_16k

NOISY = "noisy"
COLUMNS = ("utt_id", "system", "snr", "noise", *METRICS, "error")


def _enhanced_pairs(model: nn.Module, rows: pd.DataFrame,
                    wav_dir: Path | None) -> Iterator[tuple[str, np.ndarray]]:
    """(clean path, enhanced float32 signal) per row; enhancement runs here, lazily."""
    for utt_id, clean, noisy in zip(rows["utt_id"], rows["clean"], rows["noisy"]):
        wave = torch.from_numpy(read_16k(noisy, dtype="float32"))
        enhanced = enhance_waveform(model, wave).cpu().numpy()
        if wav_dir is not None:
            write_wav_16k(wav_dir / f"{utt_id}.wav", enhanced)
        yield clean, enhanced


def metrics_table(rows: pd.DataFrame, scores: list[dict[str, Any]], system: str) -> pd.DataFrame:
    """One row per utterance with the columns of docs/results.md."""
    table = pd.DataFrame(scores, columns=[*METRICS, "error"])
    table.insert(0, "utt_id", rows["utt_id"].to_numpy())
    table.insert(1, "system", system)
    table.insert(2, "snr", rows["snr"].to_numpy(dtype=float))
    table.insert(3, "noise", rows["noise"].to_numpy())
    table["error"] = table["error"].fillna("")
    return table[list(COLUMNS)]


def describe(values: pd.Series) -> dict[str, float | int | None]:
    """Mean, sample standard deviation, 95 % t-interval half-width and count of the
    finite values (None where undefined)."""
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    out: dict[str, float | int | None] = {"mean": float(v.mean()) if n else None,
                                           "std": None, "ci95": None, "n": n}
    if n > 1:
        out["std"] = float(v.std(ddof=1))
        out["ci95"] = t_half_width(v)
    return out


def snr_key(snr: float) -> str:
    """Key of an SNR group in summary.json: ``"5"``, ``"2.5"``, ``"-5"`` or ``"unknown"``."""
    return "unknown" if math.isnan(snr) else f"{snr:g}"


def summarise(table: pd.DataFrame, system: str) -> dict[str, Any]:
    """summary.json: counts, failures and statistics overall and per SNR."""
    by_snr = {}
    snrs = table["snr"].to_numpy(dtype=float)
    groups = [(snr, snrs == snr) for snr in sorted(set(snrs[np.isfinite(snrs)].tolist()))]
    if np.isnan(snrs).any():
        groups.append((math.nan, np.isnan(snrs)))
    for snr, mask in groups:
        by_snr[snr_key(snr)] = {m: describe(table[m][mask]) for m in METRICS}
    return {
        "system": system,
        "n": int(len(table)),
        "failed": {m: int((~np.isfinite(table[m].to_numpy(dtype=float))).sum()) for m in METRICS},
        "overall": {m: describe(table[m]) for m in METRICS},
        "by_snr": by_snr,
    }


def write_outputs(out: str | Path, table: pd.DataFrame, summary: dict[str, Any]) -> None:
    """metrics.tsv and summary.json, each written atomically."""
    out = Path(out)
    with atomic_path(out / "metrics.tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="NaN")
    write_json(out / "summary.json", summary)


def evaluate(manifest: str | Path, out: str | Path, *, model: nn.Module | None = None,
             system: str = NOISY, split: str = "test", workers: int = 1,
             save_wavs: bool = False, progress: bool = True) -> dict[str, Any]:
    """Score ``split``: the model's enhanced output, or the noisy input when ``model`` is
    None. Writes metrics.tsv, summary.json (and wavs/ with ``save_wavs``) under ``out``
    and returns the summary."""
    rows = read_split(manifest, split)
    out = Path(out)
    saving = model is not None and save_wavs
    with atomic_dir(out / "wavs") if saving else contextlib.nullcontext() as wav_dir:
        if model is None:
            pairs = zip(rows["clean"], rows["noisy"])
        else:
            pairs = _enhanced_pairs(model.eval(), rows, wav_dir)
        scores = list(iter_scores(pairs, workers=workers, progress=progress, total=len(rows),
                                  desc=f"evaluate {system}"))
    table = metrics_table(rows, scores, system)
    summary = summarise(table, system)
    # Where the model ran; the noisy input involves no model.
    summary["device"] = None if model is None else describe_device(model_device(model))
    write_outputs(out, table, summary)
    return summary
