"""BandSplitNet: band split -> residual sequence layers -> 3-tap mask decoder.

One class for every ablation; :func:`build_model` makes it from the model settings
of config.yaml (``ablations.<name>.model``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .bandsplit import BandSplit
from .decoder import MaskDecoder, apply_mask
from .initialization import init_mamba_as_original_
from .layers import build_layer
from .mamba import MambaBlock
from .spec import ModelSpec, parse_model_config


class BandSplitNet(nn.Module):
    """Complex STFT ``[B, 257, T]`` (from :func:`mbsnet.audio.stft`) -> enhanced STFT.

    Top-level modules: ``band_split``, ``layers`` (in the order applied),
    ``final_norm`` (LayerNorm over channels; only when configured) and ``decoder``.
    Under bf16 autocast the STFT input and the complex mask stay float32 (and the
    Mamba scan runs in float32). With ``gradient_checkpointing`` every residual layer
    keeps only its input during training and recomputes the rest in backward (BSRNN at
    batch 6, 2 s crops on the CPU: 3.24 -> 0.75 GB for the generator step, 1.4x the time).
    ``cpu_lstm_kernel`` is the LSTM kernel for CPU training (see
    :class:`~mbsnet.models.layers.LSTMLayer`). The spec's ``scan`` becomes every Mamba
    block's ``scan_mode``; ``init: original`` re-initialises the Mamba blocks after
    construction, as the original code did.
    """

    def __init__(self, spec: ModelSpec, *, gradient_checkpointing: bool = False,
                 cpu_lstm_kernel: str = "native") -> None:
        super().__init__()
        self.settings = spec
        self.gradient_checkpointing = gradient_checkpointing
        self.band_split = BandSplit(spec.channels)
        self.layers = nn.ModuleList(build_layer(block, spec.channels, cpu_lstm_kernel)
                                    for block in spec.layers)
        self.final_norm = nn.LayerNorm(spec.channels) if spec.final_norm else None
        self.decoder = MaskDecoder(spec.channels, spec.decoder)
        for block in self.mamba_blocks():
            block.scan_mode = spec.scan
            if spec.init == "original":
                init_mamba_as_original_(block)

    def mamba_blocks(self) -> list[MambaBlock]:
        """Every Mamba block, in module order."""
        return [m for m in self.modules() if isinstance(m, MambaBlock)]

    def encode(self, spec: torch.Tensor) -> torch.Tensor:
        """The band features after all layers (and the final norm): ``[B, N, T, 31]``."""
        z = self.band_split(spec)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            z = checkpoint(layer, z, use_reentrant=False) if checkpointing else layer(z)
        if self.final_norm is not None:
            z = self.final_norm(z.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return z

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if not spec.is_complex() or spec.dim() != 3:
            raise ValueError(f"expected a complex STFT [batch, bins, frames], got "
                             f"{tuple(spec.shape)} {spec.dtype}")
        return apply_mask(spec, self.decoder(self.encode(spec)))


def build_model(model_cfg: dict[str, Any], *, gradient_checkpointing: bool = False,
                cpu_lstm_kernel: str = "native") -> BandSplitNet:
    """The network for one ablation's model settings; raises ConfigError naming the bad key."""
    return BandSplitNet(parse_model_config(model_cfg),
                        gradient_checkpointing=gradient_checkpointing,
                        cpu_lstm_kernel=cpu_lstm_kernel)
