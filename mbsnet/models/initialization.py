"""Weight initialisation as in the original implementation.

The BSRNN parts (LSTMs, every Linear outside the Mamba blocks) always get it. The Mamba
blocks get Mamba's own initialisation unless a model asks for ``init: original``
(:func:`init_mamba_as_original_`).
"""

from __future__ import annotations

import torch
from torch import nn

from .mamba import MambaBlock


def init_linear_(linear: nn.Linear) -> nn.Linear:
    """Xavier-uniform weight, zero bias."""
    nn.init.xavier_uniform_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
    return linear


def init_lstm_(lstm: nn.LSTM) -> nn.LSTM:
    """Input weights xavier-uniform, recurrent weights orthogonal, biases zero."""
    for name, param in lstm.named_parameters():
        if name.startswith("weight_ih"):
            nn.init.xavier_uniform_(param)
        elif name.startswith("weight_hh"):
            nn.init.orthogonal_(param)
        elif name.startswith("bias"):
            nn.init.zeros_(param)
    return lstm


@torch.no_grad()
def init_mamba_as_original_(block: MambaBlock) -> MambaBlock:
    """What the original code's post-construction pass did to a Mamba block.

    The original generators ran Xavier-uniform weight and zero bias over every ``nn.Linear``
    after construction, the Mamba blocks' included: in_proj, out_proj, dt_proj (which zeroes
    the inverse-softplus dt bias, so dt starts at softplus(0) = ln 2 instead of 1e-3..1e-1)
    and its x_proj_dt, B_proj and C_proj, which are the three row blocks of our x_proj, each
    with its own fan-out. The convolution, A_log and D keep their values.
    """
    for linear in (block.in_proj, block.dt_proj, block.out_proj):
        init_linear_(linear)
    rows = (block.dt_rank, block.d_state, block.d_state)
    for part in block.x_proj.weight.split(rows, dim=0):
        nn.init.xavier_uniform_(part)
    return block
