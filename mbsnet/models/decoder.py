"""The mask decoder (a complex 3-tap mask per bin) and its application to the STFT."""

from __future__ import annotations

import torch
from torch import nn

from .bandsplit import BAND_WIDTHS
from .initialization import init_linear_

TAPS = 3


def decoder_expansions(kind: str) -> tuple[int, ...]:
    """Hidden-size expansion e of each band's head for a decoder kind.

    uniform: 4 everywhere (BSRNN); lightweight: 2 everywhere; adaptive: 2 on the
    first 11 (narrow, low-frequency) bands, 3 on the next 12, 4 on the last 8.
    """
    if kind == "uniform":
        return (4,) * len(BAND_WIDTHS)
    if kind == "lightweight":
        return (2,) * len(BAND_WIDTHS)
    if kind == "adaptive":
        return (2,) * 11 + (3,) * 12 + (4,) * 8
    raise ValueError(f"unknown decoder kind {kind!r}")


class MaskHead(nn.Module):
    """One band: GroupNorm(1,N) -> Linear(N, eN) -> Tanh -> Linear(eN, 12w) -> GLU.

    ``[B, N, T]`` -> real mask ``[B, T, w, 3, 2]`` (bin, tap, real/imag).
    """

    def __init__(self, channels: int, width: int, expansion: int) -> None:
        super().__init__()
        self.width = width
        self.norm = nn.GroupNorm(1, channels)
        self.fc1 = init_linear_(nn.Linear(channels, expansion * channels))
        self.fc2 = init_linear_(nn.Linear(expansion * channels, 4 * TAPS * width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.fc1(self.norm(x).transpose(1, 2)))
        out = nn.functional.glu(self.fc2(hidden), dim=-1)
        return out.reshape(out.shape[0], out.shape[1], self.width, TAPS, 2)


class MaskDecoder(nn.Module):
    """Band features ``[B, N, T, 31]`` -> complex 3-tap mask ``[B, 257, T, 3]`` (float32).

    Tap 0 weights frame t-1, tap 1 frame t, tap 2 frame t+1 (see :func:`apply_mask`).
    """

    def __init__(self, channels: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.heads = nn.ModuleList(MaskHead(channels, w, e) for w, e in
                                   zip(BAND_WIDTHS, decoder_expansions(kind), strict=True))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        masks = [head(z[..., k]) for k, head in enumerate(self.heads)]
        mask = torch.cat(masks, dim=2).transpose(1, 2)       # [B, F, T, 3, 2]
        # float32 before going complex: bf16 autocast output has no complex dtype.
        return torch.view_as_complex(mask.float().contiguous())


def apply_mask(spec: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The 3-tap complex filter over time: ``sum_j mask[..., j] * spec[..., t - 1 + j]``.

    spec: complex ``[B, F, T]``; mask: complex ``[B, F, T, 3]``. Frames outside the
    sequence count as zero, so the first and last frame use only the two taps that exist.
    """
    zero = spec.new_zeros(*spec.shape[:-1], 1)
    previous = torch.cat([zero, spec[..., :-1]], dim=-1)
    following = torch.cat([spec[..., 1:], zero], dim=-1)
    return mask[..., 0] * previous + mask[..., 1] * spec + mask[..., 2] * following
