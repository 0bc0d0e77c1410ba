"""The Mamba-1 (S6) selective scan.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * x_t
    y_t = C_t . h_t + D * x_t

Layout (channels last, as the Linear layers produce it):
    x, delta: [batch, length, dim]   (delta already positive, i.e. after softplus)
    A:        [dim, d_state]         (negative: A = -exp(A_log))
    B, C:     [batch, length, d_state]
    D:        [dim]
    returns y [batch, length, dim] in float32.
"""

from __future__ import annotations

import torch


def selective_scan_reference(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                             B: torch.Tensor, C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Plain sequential scan, step by step: the ground truth for tests (slow)."""
    batch, length, dim = x.shape
    h = x.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, t, :, None] * A)
        h = decay * h + (delta[:, t, :, None] * x[:, t, :, None]) * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, dim=1) + x * D


def selective_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                   B: torch.Tensor, C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """The scan the Mamba block calls; always computed in float32, even under autocast."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        args = [t.float() for t in (x, delta, A, B, C, D)]
        return selective_scan_reference(*args)
