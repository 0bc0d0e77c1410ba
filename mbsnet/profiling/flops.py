"""Inference compute of a band-split network: FLOPs and MACs per second of audio.

``torch.utils.flop_counter.FlopCounterMode`` counts the matrix products and convolutions
(``mm``, ``addmm``, ``bmm``, ``convolution``, ...) it sees at the dispatcher, at 2 FLOPs
per multiply-accumulate; it does not count elementwise ops. Two parts of these networks
need an analytic count instead:

- the selective scan: its recurrence is a Python loop of elementwise ops inside a custom
  autograd Function (or a fused CUDA kernel), which the counter does not count or cannot
  see. Whatever the counter does see inside a scan call is measured on a standalone call
  of the same shapes and replaced by :func:`scan_flops`;
- ``nn.LSTM``: on CPU (and with cuDNN) the whole recurrence is one aten op the counter
  has no formula for. Whatever it counted inside an LSTM module is replaced by
  :func:`lstm_flops`.

MACs are reported as FLOPs / 2 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..audio import SAMPLE_RATE, stft
from ..models import MambaBlock
from ..models.scan import selective_scan

METHOD = (
    "torch.utils.flop_counter.FlopCounterMode on one generator forward (batch 1, eval, "
    "no grad; STFT/iSTFT excluded): matmuls and convolutions at 2 FLOPs per MAC, elementwise "
    "ops not counted. The counter cannot see the selective scan's recurrence (Python loop in "
    "a custom autograd Function / fused kernel) nor aten LSTM ops on CPU, so each scan call "
    "is counted analytically as 7*B*L*D*N + 3*B*L*D FLOPs (exp(dA), dx*B, state FMA, C.h "
    "contraction, D skip) and each LSTM as 2*B*T*dirs*4H*(I+H) per layer (gate matmuls), "
    "replacing whatever the counter saw inside them. MACs = FLOPs / 2."
)


def scan_flops(batch: int, length: int, dim: int, d_state: int) -> int:
    """Arithmetic of one selective scan over ``[batch, length, dim]`` with ``d_state`` states.

    Per (b, t, d, n): Δ·A and its exp (2), (Δx)·B (1), h = a·h + drive (2), C·h summed
    over n (2); per (b, t, d): Δ·x (1) and the skip D·x added (2).
    """
    return 7 * batch * length * dim * d_state + 3 * batch * length * dim


def lstm_flops(lstm: nn.LSTM, batch: int, steps: int) -> int:
    """Gate matmuls of an ``nn.LSTM`` over ``steps`` time steps (2 FLOPs per MAC, like the
    counter's Linear; gate nonlinearities not counted)."""
    directions = 2 if lstm.bidirectional else 1
    hidden = lstm.hidden_size
    out = lstm.proj_size or hidden
    total = 0
    for layer in range(lstm.num_layers):
        inputs = lstm.input_size if layer == 0 else directions * out
        macs = 4 * hidden * (inputs + out) + (hidden * out if lstm.proj_size else 0)
        total += 2 * batch * steps * directions * macs
    return total


@dataclass
class FlopCount:
    """Inference FLOPs of one forward over ``seconds`` of audio, by source."""

    seconds: float
    counter: int = 0                     # FlopCounterMode total, analytic regions removed
    scan: int = 0                        # analytic selective-scan FLOPs
    lstm: int = 0                        # analytic LSTM FLOPs
    scan_calls: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.counter + self.scan + self.lstm

    @property
    def flops_per_second(self) -> float:
        return self.total / self.seconds

    @property
    def macs_per_second(self) -> float:
        return self.flops_per_second / 2

    def as_dict(self) -> dict:
        """Per-second figures by source, for profile.json."""
        return {"total": self.flops_per_second, "counter": self.counter / self.seconds,
                "scan": self.scan / self.seconds, "lstm": self.lstm / self.seconds}


def _counted(flop_counts: dict, key: str) -> int:
    return int(sum(flop_counts.get(key, {}).values()))


def _visible_scan_flops(call: tuple[int, int, int, int], device: torch.device) -> int:
    """What the counter sees inside one selective_scan call of these shapes."""
    batch, length, dim, d_state = call
    x = torch.randn(batch, length, dim, device=device)
    delta = torch.rand(batch, length, dim, device=device) * 0.1
    A = -torch.rand(dim, d_state, device=device)
    B = torch.randn(batch, length, d_state, device=device)
    C = torch.randn(batch, length, d_state, device=device)
    D = torch.ones(dim, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        selective_scan(x, delta, A, B, C, D)
    return counter.get_total_flops()


def count_inference_flops(model: nn.Module, seconds: float = 1.0,
                          device: torch.device | str = "cpu") -> FlopCount:
    """FLOPs of ``model`` (a complex-STFT -> STFT network) on ``seconds`` of audio."""
    device = torch.device(device)
    spec = stft(torch.randn(1, round(seconds * SAMPLE_RATE), device=device))
    result = FlopCount(seconds=seconds)
    lstm_calls: list[tuple[nn.LSTM, int, int]] = []
    root = type(model).__name__

    def on_mamba(block: MambaBlock, args: tuple, _output: object) -> None:
        sequences, length, _ = args[0].shape
        result.scan_calls.append((sequences, length, block.D.numel(), block.A_log.shape[1]))

    def on_lstm(lstm: nn.LSTM, args: tuple, _output: object) -> None:
        x = args[0]
        if isinstance(x, nn.utils.rnn.PackedSequence):
            raise NotImplementedError("FLOP count of packed LSTM input")
        if x.dim() == 2:                                    # unbatched [T, I]
            batch, steps = 1, x.shape[0]
        elif lstm.batch_first:
            batch, steps = x.shape[0], x.shape[1]
        else:
            batch, steps = x.shape[1], x.shape[0]
        lstm_calls.append((lstm, batch, steps))

    hooks = [m.register_forward_hook(on_mamba) for m in model.modules()
             if isinstance(m, MambaBlock)]
    hooks += [m.register_forward_hook(on_lstm) for m in model.modules() if isinstance(m, nn.LSTM)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(spec)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()

    counts = counter.get_flop_counts()
    lstm_seen = sum(_counted(counts, f"{root}.{name}") for name, m in model.named_modules()
                    if isinstance(m, nn.LSTM))
    visible = {call: _visible_scan_flops(call, device) for call in set(result.scan_calls)}
    scan_seen = sum(visible[call] for call in result.scan_calls)
    result.counter = counter.get_total_flops() - lstm_seen - scan_seen
    result.scan = sum(scan_flops(*call) for call in result.scan_calls)
    result.lstm = sum(lstm_flops(*call) for call in lstm_calls)
    return result
