"""Residual layers over the band features ``z: [B, N, T, K]`` (N channels, T frames, K bands).

Each layer maps z to ``z + f(z)`` with f a sequence model along one axis:
``time`` runs within each band over the frames (sequences ``[B*K, T, N]``),
``band`` runs across the bands of each frame (sequences ``[B*T, K, N]``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..device import autocast_off
from .initialization import init_linear_, init_lstm_
from .mamba import MambaBlock
from .spec import BlockSpec


def to_sequences(z: torch.Tensor, axis: str) -> torch.Tensor:
    """``[B, N, T, K]`` -> ``[B*K, T, N]`` (axis time) or ``[B*T, K, N]`` (axis band)."""
    batch, channels, frames, bands = z.shape
    if axis == "time":
        return z.permute(0, 3, 2, 1).reshape(batch * bands, frames, channels)
    return z.permute(0, 2, 3, 1).reshape(batch * frames, bands, channels)


def from_sequences(seq: torch.Tensor, axis: str, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`to_sequences` for a z of the given ``shape``."""
    batch, channels, frames, bands = shape
    if axis == "time":
        return seq.reshape(batch, bands, frames, channels).permute(0, 3, 2, 1)
    return seq.reshape(batch, frames, bands, channels).permute(0, 3, 1, 2)


def reverse(seq: torch.Tensor) -> torch.Tensor:
    """Reverse sequences ``[S, L, N]`` along L."""
    return torch.flip(seq, dims=[1])


CPU_LSTM_KERNELS = ("native", "onednn")


@contextlib.contextmanager
def _onednn(enabled: bool) -> Iterator[None]:
    """Allow or forbid PyTorch's oneDNN kernels inside the block (restored afterwards)."""
    previous = torch.backends.mkldnn.enabled
    # torch's stubs type the flag as its descriptor (ContextProp); the value is a bool
    torch.backends.mkldnn.enabled = enabled and previous  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


class LSTMLayer(nn.Module):
    """BSRNN block: GroupNorm(1,N) -> LSTM(N, 2N) along the axis -> Linear -> residual.

    Bidirectional: LSTM in both directions and Linear(4N, N); else Linear(2N, N).

    ``cpu_kernel`` picks the LSTM kernel for training on the CPU (gradients enabled):
    ``native`` (PyTorch's own) or ``onednn``. Measured for BSRNN at batch 6, 2 s crops:
    the same resident memory (3.5 GB) but oneDNN's allocations add up to twice as much
    (6.35 vs 3.19 GB; the rest is reserved, never touched), and it is 5% slower on one
    thread, 1.25x faster on two. Inference always uses oneDNN (1.6x faster here), CUDA cuDNN.

    The LSTM always runs in float32, outside autocast: cuDNN's autocast path casts an RNN's
    input, weights and state to float16 whatever the autocast dtype (PyTorch's
    ``AutocastRNN.cpp``), so under bf16 autocast it would train in unscaled fp16, and the
    CPU's would run the recurrence in bf16. The norm and the projection follow autocast.
    """

    def __init__(self, channels: int, axis: str, bidirectional: bool,
                 cpu_kernel: str = "native") -> None:
        super().__init__()
        if cpu_kernel not in CPU_LSTM_KERNELS:
            raise ValueError(f"cpu_kernel must be one of {CPU_LSTM_KERNELS}, got {cpu_kernel!r}")
        self.axis = axis
        self.cpu_kernel = cpu_kernel
        self.norm = nn.GroupNorm(1, channels)
        self.rnn = init_lstm_(nn.LSTM(channels, 2 * channels, batch_first=True,
                                      bidirectional=bidirectional))
        directions = 2 if bidirectional else 1
        self.proj = init_linear_(nn.Linear(directions * 2 * channels, channels))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        native = (self.cpu_kernel == "native" and z.device.type == "cpu"
                  and torch.is_grad_enabled())
        x = to_sequences(self.norm(z), self.axis)
        with _onednn(not native), autocast_off(z.device.type):
            seq, _ = self.rnn(x.float())
        return z + from_sequences(self.proj(seq), self.axis, z.shape)


class MambaLayer(nn.Module):
    """One unidirectional Mamba block along the axis (its pre-norm and residual included)."""

    def __init__(self, channels: int, axis: str, d_state: int, expand: int) -> None:
        super().__init__()
        self.axis = axis
        self.block = MambaBlock(channels, d_state, expand)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return from_sequences(self.block(to_sequences(z, self.axis)), self.axis, z.shape)


class BiMambaLayer(nn.Module):
    """LayerNorm, then a forward Mamba block and a second block on the reversed
    sequence (flipped back); concat -> Linear(2N, N) -> residual with the layer input."""

    def __init__(self, channels: int, axis: str, d_state: int, expand: int) -> None:
        super().__init__()
        self.axis = axis
        self.norm = nn.LayerNorm(channels)
        self.forward_block = MambaBlock(channels, d_state, expand)
        self.backward_block = MambaBlock(channels, d_state, expand)
        self.merge = init_linear_(nn.Linear(2 * channels, channels))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = to_sequences(z, self.axis)
        y = self.norm(x)
        both = torch.cat([self.forward_block(y), reverse(self.backward_block(reverse(y)))], dim=-1)
        return from_sequences(x + self.merge(both), self.axis, z.shape)


class FeatureMLPLayer(nn.Module):
    """``z + GELU(LayerNorm(Linear(N, N)(z)))`` on the channel dim of every (frame, band).

    This is the optimized variant's "cross-band MLP": it mixes the N features of each
    band, not the bands, so its axis has no effect.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = init_linear_(nn.Linear(channels, channels))
        self.norm = nn.LayerNorm(channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.permute(0, 2, 3, 1)
        return z + F.gelu(self.norm(self.fc(x))).permute(0, 3, 1, 2)


def build_layer(block: BlockSpec, channels: int, cpu_lstm_kernel: str = "native") -> nn.Module:
    """The residual layer a block spec describes (``cpu_lstm_kernel``: see LSTMLayer)."""
    if block.type == "lstm":
        return LSTMLayer(channels, block.axis, block.bidirectional, cpu_lstm_kernel)
    if block.type == "mamba":
        layer = BiMambaLayer if block.bidirectional else MambaLayer
        return layer(channels, block.axis, block.d_state, block.expand)
    if block.type == "mlp":
        return FeatureMLPLayer(channels)
    raise ValueError(f"unknown block type {block.type!r}")

