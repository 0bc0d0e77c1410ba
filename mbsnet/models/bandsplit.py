"""The band split: 31 sub-bands of the 257-bin STFT, each projected to an N-dim feature."""

from __future__ import annotations

import torch
from torch import nn

from ..audio import N_BINS
from .initialization import init_linear_

#: Sub-band widths in bins (BSRNN, 16 kHz, 512-point STFT): 2 + 10x3 + 12x8 + 7x16 + 17 = 257.
BAND_WIDTHS: tuple[int, ...] = (2,) + (3,) * 10 + (8,) * 12 + (16,) * 7 + (17,)
N_BANDS = len(BAND_WIDTHS)
assert sum(BAND_WIDTHS) == N_BINS


class BandSplit(nn.Module):
    """Complex STFT ``[B, 257, T]`` -> band features ``[B, N, T, 31]``.

    Each band's real/imag values (interleaved per bin: re0, im0, re1, im1, ...) go
    through GroupNorm(1, 2*width) (statistics over the band's values and all frames)
    and Linear(2*width, N).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.widths = BAND_WIDTHS
        self.norms = nn.ModuleList(nn.GroupNorm(1, 2 * w) for w in self.widths)
        self.projections = nn.ModuleList(
            init_linear_(nn.Linear(2 * w, channels)) for w in self.widths)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        ri = torch.view_as_real(spec)                     # [B, F, T, 2]
        batch, _, frames, _ = ri.shape
        features = []
        bands = ri.split(self.widths, dim=1)
        for band, norm, proj in zip(bands, self.norms, self.projections, strict=True):
            values = band.permute(0, 2, 1, 3).reshape(batch, frames, -1)   # [B, T, 2w]
            values = norm(values.transpose(1, 2)).transpose(1, 2)
            features.append(proj(values))                                  # [B, T, N]
        return torch.stack(features, dim=-1).transpose(1, 2)              # [B, N, T, K]
