"""Weight initialisation of the BSRNN parts (as in the original implementation)."""

from __future__ import annotations

from torch import nn


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
