"""What makes a batch computed in pieces (micro-batches, and shares on several processes)
give the gradients of the batch computed whole, to float rounding.

The losses are means over the batch, so each piece's loss is weighted by its share of the
items (:class:`Piece`) and DistributedDataParallel averages over the processes. Two parts
of the MetricGAN discriminator depend on more than the items of a piece:

- its Dropout draws a random mask for the whole batch: :class:`GlobalBatchDropout` draws
  the mask of the global batch on every process and applies the rows of the piece, so each
  item is dropped as it would be in one piece;
- its spectral norms take one power-iteration step per forward pass in training mode, and
  the dropout advances the RNG: :class:`Rewind` puts both back to where the step started
  before each piece, so every piece sees what the whole batch saw and the step ends as one
  whole-batch step would.

A run of one process in one piece uses none of this (its arithmetic stays as it was).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Piece:
    """One micro-batch: items ``start``..``stop`` of this process's share of the batch, and
    the rows of the global batch they are (``global_start``, ``global_size``)."""

    start: int
    stop: int
    share: int
    global_start: int
    global_size: int

    @property
    def items(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def weight(self) -> float:
        """The piece's part of the share's mean loss."""
        return (self.stop - self.start) / self.share


def pieces(share: int, micro_batch: int, rank: int = 0, world: int = 1) -> list[Piece]:
    """The micro-batches of a share of ``share`` items (the share of process ``rank`` of
    ``world``, every process taking an equal, contiguous share of the global batch)."""
    return [Piece(start, min(start + micro_batch, share), share, rank * share + start,
                  share * world)
            for start in range(0, share, micro_batch)]


class BatchRows:
    """Which rows of the global batch the piece being computed is (set before each piece)."""

    def __init__(self) -> None:
        self.piece: Piece | None = None


class GlobalBatchDropout(nn.Module):
    """Dropout with the mask of the global batch: the mask is drawn for all
    ``piece.global_size`` rows (the same draw a whole batch would make) and the piece's
    rows are applied. Needs ``rows.piece`` set in training mode."""

    def __init__(self, p: float, rows: BatchRows) -> None:
        super().__init__()
        self.p, self.rows = p, rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        piece = self.rows.piece
        if piece is None or x.shape[0] != piece.stop - piece.start:
            raise RuntimeError("GlobalBatchDropout: the rows of the current piece are not set")
        # the same operations as PyTorch's CPU dropout: a Bernoulli mask, scaled, multiplied
        noise = x.new_empty((piece.global_size, *x.shape[1:])).bernoulli_(1 - self.p)
        noise.div_(1 - self.p)
        start = piece.global_start
        return x * noise[start:start + x.shape[0]]


def use_global_batch_dropout(module: nn.Module, rows: BatchRows) -> int:
    """Replace every ``nn.Dropout`` inside ``module`` by a :class:`GlobalBatchDropout`
    reading ``rows``; returns how many were replaced (no parameters change)."""
    targets = [(parent, name, child) for parent in module.modules()
               for name, child in parent.named_children() if type(child) is nn.Dropout]
    for parent, name, child in targets:
        setattr(parent, name, GlobalBatchDropout(child.p, rows))
    return len(targets)


class Rewind:
    """The RNG states (CPU, and ``device``'s on CUDA) and ``module``'s buffers as they were
    when made; :meth:`__call__` puts them back."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.buffers = [(buffer, buffer.detach().clone()) for buffer in module.buffers()]

    @torch.no_grad()
    def __call__(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        for buffer, saved in self.buffers:
            buffer.copy_(saved)
