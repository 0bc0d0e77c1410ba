"""The prepared corpus on disk (docs/results.md, ``data/``): WAV pairs and manifest.tsv.

``{split}/clean/{utt_id}.wav`` and ``{split}/noisy/{utt_id}.wav``, 16 kHz mono PCM-16, and a
tab-separated manifest with the columns :data:`COLUMNS`, paths relative to its directory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import layout
from ..atomic import write_text
from ..errors import ConfigError, DataError
from ..wavio import SAMPLE_RATE, write_pcm16

MANIFEST = layout.within(layout.DATA, layout.MANIFEST)
COLUMNS = ("utt_id", "split", "speaker", "noise", "snr", "duration", "clean", "noisy")
SPLITS = ("train", "valid", "test")
UNKNOWN_NOISE = "unknown"


@dataclass(frozen=True)
class Row:
    """One manifest line; ``snr`` is NaN when unknown, paths are relative."""

    utt_id: str
    split: str
    speaker: str
    noise: str
    snr: float
    duration: float
    clean: str
    noisy: str


def pair_paths(split: str, utt_id: str) -> tuple[str, str]:
    """Relative paths of an utterance's clean and noisy WAVs."""
    return f"{split}/clean/{utt_id}.wav", f"{split}/noisy/{utt_id}.wav"


def write_pair(root: Path, split: str, utt_id: str, speaker: str, noise: str, snr: float,
               clean: np.ndarray, noisy: np.ndarray) -> Row:
    """Write an utterance's int16 clean/noisy signals under ``root`` and return its row."""
    if clean.dtype != np.int16 or noisy.dtype != np.int16 or clean.shape != noisy.shape:
        raise ValueError(f"{utt_id}: clean and noisy must be int16 arrays of one shape")
    rel = pair_paths(split, utt_id)
    for path, samples in zip(rel, (clean, noisy), strict=True):
        write_pcm16(root / path, samples)
    return Row(utt_id, split, speaker, noise, float(snr), len(clean) / SAMPLE_RATE, *rel)


def _format_row(row: Row) -> str:
    values = astuple(row)
    snr = "nan" if math.isnan(row.snr) else repr(float(row.snr))
    fields = [*values[:4], snr, f"{row.duration:.6f}", *values[6:]]
    return "\t".join(str(v) for v in fields)


def write_manifest(rows: Iterable[Row], path: Path) -> None:
    """Write the manifest atomically, rows ordered by split (train, valid, test) then id."""
    rows = sorted(rows, key=lambda r: (SPLITS.index(r.split), r.utt_id))
    ids = [r.utt_id for r in rows]
    if len(set(ids)) != len(ids):
        raise DataError("duplicate utterance ids in the corpus")
    write_text(path, "\t".join(COLUMNS) + "\n" + "".join(_format_row(r) + "\n" for r in rows))


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest: string columns, float ``snr``/``duration``, absolute WAV paths.

    Raises DataError when the file is missing, malformed or lists WAVs that do not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} not found (run `mbsnet prepare` first)")
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"manifest {path} is not a valid TSV file: {exc}") from exc
    if tuple(frame.columns) != COLUMNS:
        raise DataError(f"manifest {path}: expected the columns {' '.join(COLUMNS)}, "
                        f"found {' '.join(map(str, frame.columns))}")
    problems = []
    for column in ("snr", "duration"):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & (frame[column].str.lower() != "nan")
        if column == "duration":
            bad |= ~(values > 0)
        problems += [f"line {i + 2}: bad {column} {frame[column][i]!r}"
                     for i in np.flatnonzero(bad)]
        frame[column] = values.astype(float)
    bad_split = ~frame["split"].isin(SPLITS)
    problems += [f"line {i + 2}: unknown split {frame['split'][i]!r}"
                 for i in np.flatnonzero(bad_split)]
    duplicated = frame["utt_id"][frame["utt_id"].duplicated()].tolist()
    problems += [f"duplicate utt_id {u!r}" for u in duplicated]
    if problems:
        raise DataError(f"manifest {path} is malformed:\n" + format_list(problems))
    base = path.resolve().parent
    for column in ("clean", "noisy"):
        frame[column] = [str(base / p) for p in frame[column]]
    missing = [p for column in ("clean", "noisy") for p in frame[column] if not Path(p).is_file()]
    if missing:
        raise DataError(f"manifest {path} lists {len(missing)} WAV file(s) that do not exist:\n"
                        + format_list(missing))
    return frame


def read_split(path: str | Path, split: str) -> pd.DataFrame:
    """The manifest rows of one split, in manifest order (index 0..n-1); DataError when the
    split has none."""
    frame = read_manifest(path)
    rows = frame[frame["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise DataError(f"manifest {path} has no '{split}' utterances "
                        f"(splits present: {', '.join(sorted(frame['split'].unique()))})")
    return rows


#: where the report's example utterance is configured
EXAMPLE_KEY = "report.example_utterance"


def example_utterance(frame: pd.DataFrame, wanted: str | None = None, *, split: str = "test",
                      key: str = EXAMPLE_KEY, where: str = "the manifest") -> str:
    """The report's example utterance among the ``split`` rows of a manifest frame:
    ``wanted`` (the config's report.example_utterance) when given, else the first of the split
    in manifest order. `mbsnet evaluate` keeps this utterance's enhanced WAV and `mbsnet
    report` shows it, both through this function. DataError naming ``key``, the value and
    ``where`` when ``wanted`` is not a ``split`` utterance, or when the split is empty."""
    ids = frame.loc[frame["split"] == split, "utt_id"].astype(str).tolist()
    if not ids:
        raise DataError(f"{where} has no {split} utterances")
    if wanted is None:
        return ids[0]
    if wanted not in ids:
        raise DataError(f"{key} {wanted!r} is not a {split} utterance in {where} "
                        f"(e.g. {ids[0]!r})")
    return wanted


def format_list(items: Sequence[str], cap: int = 10) -> str:
    """Indented lines, at most ``cap`` of them, then how many more there are."""
    lines = [f"  {item}" for item in items[:cap]]
    if len(items) > cap:
        lines.append(f"  ... and {len(items) - cap} more")
    return "\n".join(lines)


def choose_valid_speakers(train_speakers: Sequence[str], spec: int | Sequence[str],
                          seed: int) -> list[str]:
    """Training speakers held out for validation (``data.valid_speakers``): ``spec`` is a
    count, picked reproducibly with ``seed``, or a list of speaker ids."""
    speakers = sorted(set(train_speakers))
    if isinstance(spec, int):
        if spec >= len(speakers):
            raise ConfigError(f"data.valid_speakers: cannot hold out {spec} of the "
                              f"{len(speakers)} training speakers (at least one must train)")
        picked = np.random.default_rng(seed).choice(len(speakers), size=spec, replace=False)
        return sorted(speakers[i] for i in picked)
    unknown = sorted(set(spec) - set(speakers))
    if unknown:
        raise ConfigError(f"data.valid_speakers: {', '.join(unknown)} not among the training "
                          f"speakers ({', '.join(speakers)})")
    if len(set(spec)) >= len(speakers):
        raise ConfigError("data.valid_speakers: at least one training speaker must remain")
    return sorted(set(spec))
