"""PyTorch datasets over a prepared corpus (manifest.tsv, see docs/results.md).

- :class:`TrainDataset`: fixed-length random crops, the same for clean and noisy;
  utterances shorter than the crop are tiled to its length (as the BSRNN recipe does). The
  crop of item ``i`` depends only on ``(seed, epoch, i)``, never on the worker or process
  that reads it.
- :class:`EvalDataset`: whole utterances, unpadded, with their labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..wavio import SAMPLE_RATE, read_16k
from .manifest import read_manifest, read_split

__all__ = ["TrainDataset", "EvalDataset", "read_manifest"]


def _read(path: str, start: int = 0, frames: int = -1) -> np.ndarray:
    samples = read_16k(path, dtype="float32", start=start, frames=frames)
    if frames >= 0 and len(samples) != frames:
        raise DataError(f"{path} is shorter than the manifest says ({start + len(samples)} "
                        f"samples, needed {start + frames}); prepare the corpus again")
    return samples


class TrainDataset(Dataset):
    """Random ``crop_seconds`` crops of the ``split`` utterances as ``(clean, noisy)``
    float tensors.

    A key is an item index (its crop of the epoch set by :meth:`set_epoch`) or an
    ``(epoch, index)`` pair (its crop of that epoch): DataLoader worker processes hold
    their own copy of the dataset and never see ``set_epoch``, so their batches name the
    epoch.
    """

    def __init__(self, manifest_path: str | Path, split: str = "train",
                 crop_seconds: float = 2.0, seed: int = 0) -> None:
        if crop_seconds <= 0:
            raise ValueError(f"crop_seconds must be positive, got {crop_seconds}")
        self.rows = read_split(manifest_path, split)
        self.crop = int(round(crop_seconds * SAMPLE_RATE))
        self.lengths = np.round(self.rows["duration"].to_numpy() * SAMPLE_RATE).astype(np.int64)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def crop_start(self, index: int, epoch: int | None = None) -> int:
        """First sample of item ``index``'s crop in ``epoch`` (default: the epoch set by
        :meth:`set_epoch`); 0 for a tiled utterance."""
        spare = int(self.lengths[index]) - self.crop
        if spare <= 0:
            return 0
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, index])
        return int(rng.integers(0, spare + 1))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        if not 0 <= index < len(self):
            raise IndexError(index)
        row = self.rows.iloc[index]
        length = int(self.lengths[index])
        pair = []
        for path in (row["clean"], row["noisy"]):
            if length >= self.crop:
                samples = _read(path, self.crop_start(index, epoch), self.crop)
            else:
                samples = np.resize(_read(path, 0, length), self.crop)  # tile cyclically
            pair.append(torch.from_numpy(samples))
        return pair[0], pair[1]


class EvalDataset(Dataset):
    """Whole ``split`` utterances, unpadded: dicts with ``utt_id``, ``clean``, ``noisy``
    (float tensors), ``snr`` (float, NaN if unknown), ``noise`` and ``speaker``."""

    def __init__(self, manifest_path: str | Path, split: str = "test") -> None:
        self.rows = read_split(manifest_path, split)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        row = self.rows.iloc[index]
        clean, noisy = _read(row["clean"]), _read(row["noisy"])
        if len(clean) != len(noisy):
            raise DataError(f"{row['utt_id']}: clean has {len(clean)} samples, noisy {len(noisy)}")
        return {"utt_id": row["utt_id"], "clean": torch.from_numpy(clean),
                "noisy": torch.from_numpy(noisy), "snr": float(row["snr"]),
                "noise": row["noise"], "speaker": row["speaker"]}
