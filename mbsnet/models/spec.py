"""The model settings of one ablation (config.yaml ``ablations.<name>.model``), checked.

The dict may come straight from YAML (callers need not validate it first): every
problem raises :class:`~mbsnet.errors.ConfigError` naming its key path, e.g.
``model.stages[0].blocks[1].d_state``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .scan import SCAN_MODES, scan_implementation

BLOCK_TYPES = ("lstm", "mamba", "mlp")
AXES = ("time", "band")
DECODERS = ("uniform", "lightweight", "adaptive")
INITS = ("mamba", "original")
"""Initialisation of the Mamba blocks: Mamba's own, or the original code's (Xavier-uniform
weights and zero biases on every Linear, dt_proj included; see initialization.py)."""

_MODEL_KEYS = {"channels", "decoder", "final_norm", "stages", "scan", "init"}
_STAGE_KEYS = {"repeat", "blocks"}
_BLOCK_KEYS = {"type", "axis", "bidirectional", "d_state", "expand"}


@dataclass(frozen=True)
class BlockSpec:
    """One residual layer: a sequence model over ``axis``."""

    type: str
    axis: str
    bidirectional: bool = False
    d_state: int = 16
    expand: int = 1


@dataclass(frozen=True)
class ModelSpec:
    """A whole network: the residual layers in the order they are applied.

    ``scan`` (a mode of :func:`mbsnet.scan.selective_scan`) and ``init`` (one of
    :data:`INITS`) concern the Mamba blocks only.
    """

    channels: int
    decoder: str
    final_norm: bool
    layers: tuple[BlockSpec, ...]
    scan: str = "exact"
    init: str = "mamba"

    @property
    def has_mamba(self) -> bool:
        """Whether any layer is a Mamba layer (the only ones ``scan`` and ``init`` affect)."""
        return any(layer.type == "mamba" for layer in self.layers)


def _mapping(value: Any, path: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
    return value


def _check_keys(value: Mapping, allowed: set[str], required: tuple[str, ...], path: str) -> None:
    for key in value:
        if key not in allowed:
            raise ConfigError(f"{path}.{key}: unknown key (allowed: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in value:
            raise ConfigError(f"{path}.{key}: missing required key")


def _positive_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{path}: expected an integer >= 1, got {value!r}")
    return value


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    return value


def _choice(value: Any, choices: tuple[str, ...], path: str) -> str:
    if value not in choices:
        raise ConfigError(f"{path}: unknown value {value!r} "
                          f"(expected one of: {', '.join(choices)})")
    return value


def _parse_block(block: Any, path: str) -> BlockSpec:
    block = _mapping(block, path)
    _check_keys(block, _BLOCK_KEYS, ("type", "axis"), path)
    spec = BlockSpec(
        type=_choice(block["type"], BLOCK_TYPES, f"{path}.type"),
        axis=_choice(block["axis"], AXES, f"{path}.axis"),
        bidirectional=_boolean(block.get("bidirectional", False), f"{path}.bidirectional"),
        d_state=_positive_int(block.get("d_state", 16), f"{path}.d_state"),
        expand=_positive_int(block.get("expand", 1), f"{path}.expand"),
    )
    if spec.type == "mlp" and spec.bidirectional:
        raise ConfigError(f"{path}.bidirectional: an mlp block has no direction; remove it")
    return spec


def parse_model_config(model_cfg: Any, path: str = "model") -> ModelSpec:
    """Check a model settings dict and return its :class:`ModelSpec` (stages unrolled)."""
    model_cfg = _mapping(model_cfg, path)
    _check_keys(model_cfg, _MODEL_KEYS, ("channels", "decoder", "stages"), path)
    stages = model_cfg["stages"]
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{path}.stages: expected a non-empty list of stages")
    layers: list[BlockSpec] = []
    for i, stage in enumerate(stages):
        stage_path = f"{path}.stages[{i}]"
        stage = _mapping(stage, stage_path)
        _check_keys(stage, _STAGE_KEYS, ("blocks",), stage_path)
        repeat = _positive_int(stage.get("repeat", 1), f"{stage_path}.repeat")
        blocks = stage["blocks"]
        if not isinstance(blocks, list) or not blocks:
            raise ConfigError(f"{stage_path}.blocks: expected a non-empty list of blocks")
        parsed = [_parse_block(b, f"{stage_path}.blocks[{j}]") for j, b in enumerate(blocks)]
        layers.extend(parsed * repeat)
    spec = ModelSpec(
        channels=_positive_int(model_cfg["channels"], f"{path}.channels"),
        decoder=_choice(model_cfg["decoder"], DECODERS, f"{path}.decoder"),
        final_norm=_boolean(model_cfg.get("final_norm", False), f"{path}.final_norm"),
        layers=tuple(layers),
        scan=_choice(model_cfg.get("scan", "exact"), SCAN_MODES, f"{path}.scan"),
        init=_choice(model_cfg.get("init", "mamba"), INITS, f"{path}.init"),
    )
    # Both keys change Mamba blocks only; on a model without any they would silently do nothing.
    if not spec.has_mamba and spec.scan != "exact":
        raise ConfigError(f"{path}.scan: {spec.scan!r} selects the scan of Mamba blocks and "
                          "this model has none; remove it")
    if not spec.has_mamba and spec.init != "mamba":
        raise ConfigError(f"{path}.init: {spec.init!r} changes Mamba blocks only (every other "
                          "layer always gets the original's initialisation) and this model has "
                          "none; remove it")
    return spec


def scan_used(model_cfg: Mapping[str, Any], device: Any) -> str | None:
    """The selective scan the model's Mamba blocks run on ``device`` (a torch.device; None:
    the model has no Mamba block)."""
    spec = parse_model_config(model_cfg)
    return scan_implementation(device, spec.scan) if spec.has_mamba else None
