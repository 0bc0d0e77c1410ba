"""Enhance a split of the prepared corpus and score it: eval/metrics.tsv and summary.json
(formats in docs/results.md), and with a model the enhanced WAV of the report's example
utterance in eval/example/. Without a model the unprocessed noisy input is scored."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..atomic import atomic_dir, atomic_path, write_json
from ..data.manifest import example_utterance, read_split
from ..device import describe as describe_device
from ..errors import DataError
from ..metrics import METRICS, iter_scores
from ..stats import t_half_width
from ..wavio import read_16k, write_wav_16k
from .enhance import enhance_waveform, model_device

NOISY = "noisy"
COLUMNS = ("utt_id", "system", "snr", "noise", *METRICS, "error")
#: the folder of ``out`` with the example utterance's enhanced WAV, whatever save_wavs says
EXAMPLE_DIR = "example"


logger = logging.getLogger(__name__)


def example_ids(rows: pd.DataFrame, wanted: Sequence[str] | None, split: str,
                manifest: str | Path) -> list[str]:
    """The utterances of ``rows`` (one split) whose enhanced WAV goes to example/:
    ``wanted``, or when None the report's default example (its first utterance). An id that
    is not in the split is a warning, not an error: the example only illustrates the report,
    which says the same where it shows it."""
    if wanted is None:
        return [example_utterance(rows, split=split, where=str(manifest))]
    kept = []
    for utt in dict.fromkeys(wanted):
        try:
            kept.append(example_utterance(rows, utt, split=split, key="example utterance",
                                          where=str(manifest)))
        except DataError as exc:
            logger.warning(f"warning: {exc}; no enhanced WAV is kept for it")
    return kept


def _enhanced_pairs(model: nn.Module, rows: pd.DataFrame, wav_dir: Path | None,
                    example_dir: Path | None,
                    examples: set[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(clean path, enhanced float32 signal) per row; enhancement runs here, lazily."""
    for utt_id, clean, noisy in zip(rows["utt_id"], rows["clean"], rows["noisy"], strict=True):
        wave = torch.from_numpy(read_16k(noisy, dtype="float32"))
        enhanced = enhance_waveform(model, wave).cpu().numpy()
        if wav_dir is not None:
            _keep(wav_dir, "wavs", utt_id, enhanced)
        if example_dir is not None and utt_id in examples:
            _keep(example_dir, EXAMPLE_DIR, utt_id, enhanced)
        yield clean, enhanced


def _keep(folder: Path, shown: str, utt_id: str, enhanced: np.ndarray) -> None:
    """Write an enhanced WAV; one that is not finite is left out with a warning (its metrics
    fail and say so in metrics.tsv), not the end of the evaluation."""
    try:
        write_wav_16k(folder / f"{utt_id}.wav", enhanced)
    except DataError as exc:   # write_wav_16k's check of the samples
        why = str(exc).split("(samples to write): ")[-1]
        logger.warning(f"warning: {shown}/{utt_id}.wav not written: {why}")


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
             save_wavs: bool = False, examples: Sequence[str] | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Score ``split``: the model's enhanced output, or the noisy input when ``model`` is
    None. Writes metrics.tsv and summary.json under ``out``, with a model also
    example/{utt_id}.wav for each of ``examples`` (None: the report's default example, the
    split's first utterance) and with ``save_wavs`` wavs/ for every utterance; returns the
    summary."""
    rows = read_split(manifest, split)
    logger.debug(f"evaluate {system}: {len(rows)} {split} utterances of {manifest}, "
                 f"{workers} scoring process(es)")
    out = Path(out)
    with contextlib.ExitStack() as stack:
        wav_dir = example_dir = None
        if model is not None:
            keep = set(example_ids(rows, examples, split, manifest))
            example_dir = stack.enter_context(atomic_dir(out / EXAMPLE_DIR))
            if save_wavs:
                wav_dir = stack.enter_context(atomic_dir(out / "wavs"))
            pairs = _enhanced_pairs(model.eval(), rows, wav_dir, example_dir, keep)
        else:
            pairs = zip(rows["clean"], rows["noisy"], strict=True)
        scores = list(iter_scores(pairs, workers=workers, progress=progress, total=len(rows),
                                  desc=f"evaluate {system}"))
    table = metrics_table(rows, scores, system)
    summary = summarise(table, system)
    # Where the model ran; the noisy input involves no model.
    summary["device"] = None if model is None else describe_device(model_device(model))
    write_outputs(out, table, summary)
    return summary


def evaluate_saved(model_file: str | Path, manifest: str | Path, out: str | Path, *,
                   device: torch.device, **options: Any) -> dict[str, Any]:
    """:func:`evaluate` of a model.pt written by `mbsnet train`, run on ``device``; the
    system is named after the ablation the model was trained as."""
    from ..models import load_model

    model, info = load_model(model_file, map_location=device)
    return evaluate(manifest, out, model=model, system=info["ablation"], **options)


def summary_line(summary: dict[str, Any], out: str | Path, examples: bool = True) -> str:
    """The line `mbsnet evaluate` ends with: the system, its mean scores, failures, where
    the results went and (``examples``) which example WAVs ``out`` keeps."""
    overall = summary["overall"]
    failed = sum(summary["failed"].values())
    where = f" on {summary['device']}" if summary["device"] else ""
    kept = ", ".join(sorted(p.stem for p in (Path(out) / EXAMPLE_DIR).glob("*.wav")))
    example = f" (example: {kept or 'none kept'})" if examples else ""
    return (f"{summary['system']}: {summary['n']} utterances{where}, "
            f"PESQ {_mean(overall['pesq_wb'])}, "
            f"STOI {_mean(overall['stoi'])}, SI-SDR {_mean(overall['si_sdr'])}"
            f"{f', {failed} failed metric values' if failed else ''} -> {out}{example}")


def _mean(stats: dict[str, Any]) -> str:
    return "n/a" if stats["mean"] is None else f"{stats['mean']:.3f}"
