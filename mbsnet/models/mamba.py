"""The Mamba-1 (S6) block, pre-norm and residual, over sequences ``[S, L, N]``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .scan import SCAN_MODES, selective_scan

DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4
CONV_KERNEL = 4


class MambaBlock(nn.Module):
    """``x + out_proj(scan(SiLU(conv(in_x)), ...) * SiLU(z))`` with ``in_x, z = in_proj(LN(x))``.

    Causal along the sequence axis (dim 1): output t depends on inputs 0..t only.
    Sizes as in Mamba-1: inner width E*N, dt rank ceil(N/16), depthwise causal
    Conv1d of kernel 4 with bias, no bias on in_proj/x_proj/out_proj. The scan, the
    softplus of dt and the gating run in float32 even under autocast.

    ``scan_mode`` is the arithmetic of the scan (``exact`` or ``as_coded``, see
    :func:`~mbsnet.scan.selective_scan`); an attribute of the block, so that a forward
    recomputed by gradient checkpointing uses the same one.
    """

    def __init__(self, channels: int, d_state: int = 16, expand: int = 1,
                 scan_mode: str = "exact") -> None:
        super().__init__()
        if scan_mode not in SCAN_MODES:
            raise ValueError(f"scan_mode must be one of {SCAN_MODES}, got {scan_mode!r}")
        self.scan_mode = scan_mode
        inner = expand * channels
        self.d_state = d_state
        self.dt_rank = math.ceil(channels / 16)
        self.norm = nn.LayerNorm(channels)
        self.in_proj = nn.Linear(channels, 2 * inner, bias=False)
        self.conv = nn.Conv1d(inner, inner, CONV_KERNEL, groups=inner, padding=CONV_KERNEL - 1)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner)
        self.A_log = nn.Parameter(torch.empty(inner, d_state))
        self.D = nn.Parameter(torch.empty(inner))
        self.out_proj = nn.Linear(inner, channels, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's S6 init: dt log-uniform in [1e-3, 1e-1] (stored as inverse softplus
        in dt_proj's bias), dt_proj weight U(+-rank^-0.5), A = -(1..d_state), D = 1."""
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        inner = self.dt_proj.out_features
        log_dt = torch.rand(inner) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN)
        dt = log_dt.exp().clamp(min=DT_FLOOR)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        states = torch.arange(1, self.d_state + 1, dtype=torch.float32)
        self.A_log.copy_(states.log().expand(inner, -1))
        self.D.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        u, gate = self.in_proj(self.norm(x)).chunk(2, dim=-1)
        u = self.conv(u.transpose(1, 2))[..., :length].transpose(1, 2)   # causal: drop the tail
        u = F.silu(u)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # dt bias added in float32, as Mamba's kernel does (delta_bias)
        delta = F.softplus(F.linear(dt, self.dt_proj.weight).float() + self.dt_proj.bias.float())
        A = -torch.exp(self.A_log.float())
        y = selective_scan(u, delta, A, B, C, self.D, mode=self.scan_mode)
        y = y * F.silu(gate.float())
        return x + self.out_proj(y)

    def extra_repr(self) -> str:
        return f"d_state={self.d_state}, dt_rank={self.dt_rank}, scan_mode={self.scan_mode}"
