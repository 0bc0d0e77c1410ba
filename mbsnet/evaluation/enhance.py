"""Whole-utterance enhancement with a loaded model, of waveforms and of users' audio files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import check_writable
from ..audio import HOP, istft, stft
from ..errors import DataError
from ..wavio import AUDIO_SUFFIXES, read_16k_mono, write_wav_16k


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU if it has none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def enhance_waveform(model: nn.Module, wave: torch.Tensor) -> torch.Tensor:
    """Enhance whole utterances: ``[samples]`` or ``[B, samples]`` -> same shape, float32.

    As in the BSRNN evaluation: reflect-pad one hop on both sides, STFT, model, iSTFT,
    and cut back to the exact input samples. Runs on the model's device; the result is
    returned on the input's device. (Inputs of at most one hop are zero-padded instead.)
    """
    if wave.dim() not in (1, 2):
        raise ValueError(f"expected [samples] or [batch, samples], got {tuple(wave.shape)}")
    batch = wave.reshape(1, -1) if wave.dim() == 1 else wave
    enhanced, _ = enhance_with_spectrum(model, batch.to(model_device(model)))
    return enhanced.reshape(wave.shape).to(wave.device)


def pad_hop(batch: torch.Tensor) -> torch.Tensor:
    """``[B, samples]`` float32, padded by one hop on both sides as the evaluation does
    (reflect; zeros for inputs of at most one hop)."""
    mode = "reflect" if batch.shape[-1] > HOP else "constant"
    return F.pad(batch.float().unsqueeze(1), (HOP, HOP), mode=mode).squeeze(1)


@torch.no_grad()
def enhance_with_spectrum(model: nn.Module, batch: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The enhanced ``[B, samples]`` waveforms and the model's complex output for the
    padded input (:func:`pad_hop`), from one forward pass; on ``batch``'s device."""
    length = batch.shape[-1]
    padded = pad_hop(batch)
    spectrum = model(stft(padded)).to(torch.complex64)
    return istft(spectrum, length=padded.shape[-1])[:, HOP: HOP + length], spectrum


# ---------------------------------------------------------------------------- files

def audio_files(source: str | Path) -> list[Path]:
    """``source`` itself if it is a file, else the audio files directly inside it (sorted)."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise DataError(f"input {source} does not exist")
    files = sorted(p for p in source.iterdir()
                   if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DataError(f"no audio files in {source}")
    return files


def enhance_files(model: nn.Module, source: str | Path, out_dir: str | Path
                  ) -> Iterator[Path]:
    """Enhance a file or every audio file in a directory into ``out_dir/<stem>.wav``
    (16 kHz mono); yields each written path. Every input is read and checked first
    (readable, not empty, finite samples) and every problem is reported together, so a bad
    file stops the run before any output appears; the output folder must be writable."""
    files = audio_files(source)
    stems = [f.stem for f in files]
    if len(set(stems)) != len(stems):
        raise DataError(f"{source}: several input files share a name stem; outputs would clash")
    problems = []
    for f in files:
        try:
            read_16k_mono(f)
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        listed = "\n  ".join(problems)
        raise DataError(f"{len(problems)} of {len(files)} input file(s) cannot be enhanced, "
                        f"nothing written:\n  {listed}")
    check_writable(out_dir)
    for f in files:
        wave = read_16k_mono(f)
        enhanced = enhance_waveform(model, torch.from_numpy(wave)).numpy()
        if not np.isfinite(enhanced).all():
            raise DataError(f"{f}: the model's output has NaN/Inf samples; nothing written "
                            "for it")
        target = Path(out_dir) / f"{f.stem}.wav"
        write_wav_16k(target, enhanced)
        yield target
