"""The MetricGAN discriminator of BSRNN training: predicts a normalised PESQ in (0, beta)."""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class LearnableSigmoid(nn.Module):
    """``beta * sigmoid(slope * x)`` with a learnable slope per feature."""

    def __init__(self, features: int = 1, beta: float = 1.2) -> None:
        super().__init__()
        self.beta = beta
        self.slope = nn.Parameter(torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.beta * torch.sigmoid(self.slope * x)


def _conv_stage(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        spectral_norm(nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False)),
        nn.InstanceNorm2d(out_channels, affine=True),
        nn.PReLU(out_channels),
    )


class Discriminator(nn.Module):
    """(clean, estimate) compressed magnitudes -> score ``[B, 1]`` in (0, 1.2).

    Each input is ``[B, F, T]`` or ``[B, 1, F, T]`` (F = 257 bins); they are stacked
    as 2 channels. 4 x [spectral-normed Conv2d 4x4/2 -> InstanceNorm2d -> PReLU] with
    ndf, 2ndf, 4ndf, 8ndf channels, global max-pool, spectral-normed Linear(8ndf, 4ndf)
    -> Dropout(0.3) -> PReLU -> spectral-normed Linear(4ndf, 1) -> learnable sigmoid.
    """

    def __init__(self, ndf: int = 16) -> None:
        super().__init__()
        widths = [2, ndf, 2 * ndf, 4 * ndf, 8 * ndf]
        self.features = nn.Sequential(
            *(_conv_stage(a, b) for a, b in itertools.pairwise(widths)),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            spectral_norm(nn.Linear(8 * ndf, 4 * ndf)),
            nn.Dropout(0.3),
            nn.PReLU(4 * ndf),
            spectral_norm(nn.Linear(4 * ndf, 1)),
        )
        self.output = LearnableSigmoid(1, beta=1.2)

    def forward(self, clean_mag: torch.Tensor, est_mag: torch.Tensor) -> torch.Tensor:
        pair = torch.cat([_with_channel(clean_mag), _with_channel(est_mag)], dim=1)
        return self.output(self.head(self.features(pair)))


def _with_channel(mag: torch.Tensor) -> torch.Tensor:
    if mag.dim() == 3:
        return mag.unsqueeze(1)
    if mag.dim() == 4 and mag.shape[1] == 1:
        return mag
    raise ValueError(f"expected a magnitude [B, F, T] or [B, 1, F, T], got {tuple(mag.shape)}")
