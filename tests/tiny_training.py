"""What the training tests share: the five ablation structures shrunk to a few channels,
a config around them that trains in seconds on the CPU, a fixed batch and the run log."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from mbsnet.config import validate_config

from .corpus import speechlike

# The five ablation structures of config.yaml, shrunk to a few channels and one repeat.
MAMBA_T = {"type": "mamba", "axis": "time", "bidirectional": True, "d_state": 4}
MAMBA_B = {"type": "mamba", "axis": "band", "bidirectional": True, "d_state": 4}
STRUCTURES = {
    "bsrnn": {"channels": 8, "decoder": "uniform", "stages": [{"blocks": [
        {"type": "lstm", "axis": "time", "bidirectional": False},
        {"type": "lstm", "axis": "band", "bidirectional": True}]}]},
    "abl1": {"channels": 8, "decoder": "uniform", "stages": [{"blocks": [MAMBA_T]}]},
    "abl2": {"channels": 8, "decoder": "uniform", "stages": [{"blocks": [MAMBA_T, MAMBA_B]}]},
    "abl3": {"channels": 8, "decoder": "adaptive", "stages": [{"blocks": [MAMBA_T, MAMBA_B]}]},
    "optimized": {"channels": 8, "decoder": "lightweight", "final_norm": True, "stages": [
        {"repeat": 2, "blocks": [{"type": "mamba", "axis": "time", "bidirectional": False,
                                  "d_state": 4}]},
        {"blocks": [{"type": "mlp", "axis": "band"}]}]},
}


def tiny_config(**training) -> dict:
    """A validated config with the STRUCTURES as ablations: 2 epochs of 2 steps of 2 crops
    of 0.25 s on the CPU, PESQ in the training process; ``training`` overrides settings."""
    settings = {"epochs": 2, "steps_per_epoch": 2, "batch_size": 2, "crop_seconds": 0.25,
                "discriminator_ndf": 4, "pesq_workers": 0, "device": "cpu"}
    settings.update(training)
    return validate_config({
        "data": {"source": "synthetic"},
        "ablations": {name: {"model": copy.deepcopy(model)} for name, model in STRUCTURES.items()},
        "training": settings,
        "resources": {"threads": 1},
    })


def fixed_batch(batch: int = 2, seconds: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """The same (clean, noisy) batch on every call: speech of a different pitch per row in
    white noise."""
    clean = torch.tensor(np.stack([speechlike(seconds, 120 + 40 * b, b) for b in range(batch)]),
                         dtype=torch.float32)
    noisy = clean + 0.03 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    return clean, noisy


def read_log(path: Path) -> list[dict]:
    """The lines of a train_log.jsonl."""
    return [json.loads(line) for line in path.read_text().splitlines()]
