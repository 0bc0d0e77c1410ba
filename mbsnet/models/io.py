"""model.pt: a trained network with the settings needed to rebuild it (docs/results.md)."""

from __future__ import annotations

import copy
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_path
from ..errors import ConfigError, MbsnetError
from .network import BandSplitNet, build_model
from .params import count_parameters

REQUIRED_KEYS = ("state_dict", "ablation", "model", "params", "config", "mbsnet_version")


def save_model(path: str | Path, model: nn.Module, *, ablation: str,
               model_cfg: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Write model.pt atomically: state_dict (on CPU), ablation, model settings,
    measured parameter total, the whole resolved config and the mbsnet version."""
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "ablation": ablation,
        "model": copy.deepcopy(dict(model_cfg)),
        "params": count_parameters(model)["total"],
        "config": copy.deepcopy(dict(config)),
        "mbsnet_version": __version__,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_model(path: str | Path, map_location: str | torch.device = "cpu"
               ) -> tuple[BandSplitNet, dict[str, Any]]:
    """Rebuild the network saved by :func:`save_model`, in eval mode.

    Returns ``(model, info)`` where info holds every saved key but the state_dict.
    Raises MbsnetError naming the file if it is missing, corrupt or inconsistent.
    """
    path = Path(path)
    if not path.is_file():
        raise MbsnetError(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise MbsnetError(f"{path} is not a readable model file: {exc}") from exc
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(payload, dict) or k not in payload]
        raise MbsnetError(f"{path} is not an mbsnet model file (missing {', '.join(missing)})")
    try:
        model = build_model(payload["model"])
    except ConfigError as exc:
        raise MbsnetError(f"{path}: its model settings are invalid: {exc}") from exc
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise MbsnetError(f"{path}: weights do not match its model settings: {exc}") from exc
    model.to(map_location).eval()
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, info
