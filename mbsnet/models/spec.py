"""The model settings of one ablation (config.yaml ``ablations.<name>.model``), checked.

The config schema's ``model`` definition (mbsnet/schemas/config.schema.yaml) is the one
source of the keys, their values and defaults: the settings are validated against it, the
defaults filled in from it, and the dataclasses built from the result. The dict may come
straight from YAML (callers need not validate it first): every problem raises
:class:`~mbsnet.errors.ConfigError` naming its key path, e.g.
``model.stages[0].blocks[1].d_state``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema

from ..config import defaults_validator, schema_definition
from ..errors import ConfigError
from .scan import scan_implementation


@dataclass(frozen=True)
class BlockSpec:
    """One residual layer: a sequence model over ``axis`` (the schema's ``block``)."""

    type: str
    axis: str
    bidirectional: bool
    d_state: int
    expand: int


@dataclass(frozen=True)
class ModelSpec:
    """A whole network: the residual layers in the order they are applied.

    ``scan`` (a mode of :func:`mbsnet.models.scan.selective_scan`) and ``init`` (Mamba's
    own initialisation, or the original code's: see initialization.py) concern the Mamba
    blocks only.
    """

    channels: int
    decoder: str
    final_norm: bool
    layers: tuple[BlockSpec, ...]
    scan: str
    init: str

    @property
    def has_mamba(self) -> bool:
        """Whether any layer is a Mamba layer (the only ones ``scan`` and ``init`` affect)."""
        return any(layer.type == "mamba" for layer in self.layers)


def parse_model_config(model_cfg: Any, path: str = "model") -> ModelSpec:
    """Check a model settings dict against the config schema's ``model`` definition and
    return its :class:`ModelSpec` (stages unrolled, defaults from the schema)."""
    schema = schema_definition("model")
    model_cfg = copy.deepcopy(model_cfg)     # the validator fills defaults into it
    error = jsonschema.exceptions.best_match(defaults_validator(schema).iter_errors(model_cfg))
    if error is not None:
        raise ConfigError(_describe(error, path))
    layers: list[BlockSpec] = []
    for i, stage in enumerate(model_cfg["stages"]):
        for j, block in enumerate(stage["blocks"]):
            # A rule across two keys of one block, kept here with a message that says why.
            if block["type"] == "mlp" and block["bidirectional"]:
                raise ConfigError(f"{path}.stages[{i}].blocks[{j}].bidirectional: an mlp block "
                                  "has no direction; remove it")
        layers.extend([BlockSpec(**block) for block in stage["blocks"]] * stage["repeat"])
    # scan and init have no schema default (filling one in would change every ablation's
    # settings hash): absent means the schema's first value.
    absent = {key: schema["$defs"]["model"]["properties"][key]["enum"][0]
              for key in ("scan", "init")}
    spec = ModelSpec(channels=model_cfg["channels"], decoder=model_cfg["decoder"],
                     final_norm=model_cfg["final_norm"], layers=tuple(layers),
                     scan=model_cfg.get("scan", absent["scan"]),
                     init=model_cfg.get("init", absent["init"]))
    # Both keys change Mamba blocks only; on a model without any they would silently do nothing.
    if not spec.has_mamba and spec.scan != absent["scan"]:
        raise ConfigError(f"{path}.scan: {spec.scan!r} selects the scan of Mamba blocks and "
                          "this model has none; remove it")
    if not spec.has_mamba and spec.init != absent["init"]:
        raise ConfigError(f"{path}.init: {spec.init!r} changes Mamba blocks only (every other "
                          "layer always gets the original's initialisation) and this model has "
                          "none; remove it")
    return spec


_KINDS = {"object": "a mapping", "array": "a list", "integer": "an integer",
          "number": "a number", "boolean": "true or false", "string": "a string"}


def _describe(error: jsonschema.ValidationError, path: str) -> str:
    """One schema error as ``KEY.PATH: what is wrong``, the key path written as the
    config's reader sees it (``model.stages[0].blocks[1].d_state``)."""
    where = list(error.absolute_path)
    value, rule = error.instance, error.validator_value
    if error.validator == "required":
        where.append(next(key for key in rule if key not in value))
        text = "missing required key"
    elif error.validator == "additionalProperties":
        allowed = error.schema["properties"]
        where.append(next(key for key in value if key not in allowed))
        text = f"unknown key (allowed: {', '.join(sorted(allowed))})"
    elif error.validator == "enum":
        text = f"unknown value {value!r} (expected one of: {', '.join(map(str, rule))})"
    elif error.validator == "type":
        shown = type(value).__name__ if isinstance(value, (Mapping, list)) else repr(value)
        text = f"expected {_KINDS.get(rule, rule)}, got {shown}"
    elif error.validator == "minimum":
        text = f"expected {_KINDS.get(error.schema.get('type'), 'a number')} >= {rule}, " \
               f"got {value!r}"
    elif error.validator == "minItems" and rule == 1:
        text = "expected a non-empty list"
    else:
        text = error.message
    return "".join([path, *(f"[{p}]" if isinstance(p, int) else f".{p}" for p in where)]) \
        + f": {text}"


def scan_used(model_cfg: Mapping[str, Any], device: Any) -> str | None:
    """The selective scan the model's Mamba blocks run on ``device`` (a torch.device; None:
    the model has no Mamba block)."""
    spec = parse_model_config(model_cfg)
    return scan_implementation(device, spec.scan) if spec.has_mamba else None
