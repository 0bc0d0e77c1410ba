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


def state_dict_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor],
                        shown: int = 3) -> str:
    """A one-line summary of how ``state`` differs from ``model``'s parameters and buffers
    (missing, unexpected and differently shaped names, the first few of each), or ""."""
    expected = model.state_dict()
    groups = {
        "missing": [k for k in expected if k not in state],
        "unexpected": [k for k in state if k not in expected],
        "shape differs": [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
                          for k, v in expected.items() if k in state and state[k].shape != v.shape],
    }
    parts = []
    for label, names in groups.items():
        if names:
            more = f", ... {len(names) - shown} more" if len(names) > shown else ""
            parts.append(f"{len(names)} {label}: {', '.join(names[:shown])}{more}")
    return "; ".join(parts)


def load_model(path: str | Path, map_location: str | torch.device = "cpu"
               ) -> tuple[BandSplitNet, dict[str, Any]]:
    """Rebuild the network saved by :func:`save_model`, in eval mode.

    Returns ``(model, info)`` where info holds every saved key but the state_dict.
    Raises MbsnetError naming the file if it is missing, corrupt or inconsistent.
    """
    path = Path(path)
    if path.is_dir():
        raise MbsnetError(f"{path} is a folder; expected a model file (e.g. {path / 'model.pt'})")
    if not path.is_file():
        raise MbsnetError(f"model file {path} does not exist")
    if path.stat().st_size == 0:
        raise MbsnetError(f"{path} is empty (0 bytes), not a model file; was its training "
                          "interrupted while writing it?")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MbsnetError(f"{path} is not a readable model file: {reason}") from exc
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(payload, dict) or k not in payload]
        raise MbsnetError(f"{path} is not an mbsnet model file (missing {', '.join(missing)})")
    try:
        model = build_model(payload["model"])
    except ConfigError as exc:
        raise MbsnetError(f"{path}: its model settings are invalid: {exc}") from exc
    problems = state_dict_mismatch(model, payload["state_dict"])
    if problems:
        raise MbsnetError(f"{path}: weights do not match its model settings ({problems})")
    model.load_state_dict(payload["state_dict"])
    model.to(map_location).eval()
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, info
