"""What one ablation changes from another: the settings whose values differ, in words.

Each line names a key path and its two values (``decoder: uniform → adaptive``); a block
or stage present on one side only is spelt out (``stages[0].blocks[1]: added mamba band
(bidirectional, d_state 16)``). A key absent from a config means its schema default, so a
spelt-out default is no change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from typing import Any

from ..config import load_schema

ARROW = " → "


#: marks a required key: it has no meaning when absent
_REQUIRED = object()


@cache
def _schema_keys() -> dict[str, dict[str, Any]]:
    """For a model, a stage and a block: every key in the schema's order, with the value
    its absence means (its `default`; the first value of an optional enum without one, as
    model.scan and model.init) or ``_REQUIRED``."""
    defs = load_schema()["$defs"]
    out: dict[str, dict[str, Any]] = {}
    for kind in ("model", "stage", "block"):
        required = set(defs[kind].get("required", ()))
        out[kind] = {}
        for key, spec in defs[kind]["properties"].items():
            if "default" in spec:
                out[kind][key] = spec["default"]
            elif "enum" in spec and key not in required:
                out[kind][key] = spec["enum"][0]
            else:
                out[kind][key] = _REQUIRED
    return out


def _filled(kind: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """``entry`` with its absent keys at their meaning, in the schema's key order."""
    keys = _schema_keys()[kind]
    out = {key: entry.get(key, default) for key, default in keys.items()
           if key in entry or default is not _REQUIRED}
    return {**out, **{k: v for k, v in entry.items() if k not in keys}}


def value_text(value: Any) -> str:
    """A config value as YAML writes it: true/false/null, lists and mappings inline."""
    if isinstance(value, (bool, list, dict)) or value is None:
        return json.dumps(value)
    return str(value)


#: the block keys that mean something for each block type (an LSTM has no state size)
_BLOCK_KEYS = {"mamba": ("bidirectional", "d_state", "expand"), "lstm": ("bidirectional",),
               "mlp": ()}


def _block_keys(block_type: str) -> tuple[str, ...]:
    return _BLOCK_KEYS.get(block_type, ("bidirectional", "d_state", "expand"))


def block_text(block: Mapping[str, Any]) -> str:
    """``mamba band (bidirectional, d_state 16)``: type, axis and what sets it apart."""
    block = _filled("block", block)
    keys = _block_keys(block["type"])
    extras = []
    if "bidirectional" in keys and block["bidirectional"]:
        extras.append("bidirectional")
    if "d_state" in keys:
        extras.append(f"d_state {block['d_state']}")
    if "expand" in keys and block["expand"] != 1:
        extras.append(f"expand {block['expand']}")
    text = f"{block['type']} {block['axis']}"
    return f"{text} ({', '.join(extras)})" if extras else text


def stage_text(stage: Mapping[str, Any]) -> str:
    """``4 × mamba time (d_state 12)``, or ``[block, block]`` for several blocks."""
    stage = _filled("stage", stage)
    blocks = [block_text(b) for b in stage["blocks"]]
    body = blocks[0] if len(blocks) == 1 else f"[{', '.join(blocks)}]"
    return f"{stage['repeat']} × {body}" if stage["repeat"] != 1 else body


def _mapping_lines(prefix: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``prefix.key: old → new`` for each differing key, nested mappings key by key."""
    lines = []
    for key in [*old, *(k for k in new if k not in old)]:
        path = f"{prefix}{key}"
        if key not in new:
            lines.append(f"{path}: removed ({value_text(old[key])})")
        elif key not in old:
            lines.append(f"{path}: added ({value_text(new[key])})")
        elif isinstance(old[key], Mapping) and isinstance(new[key], Mapping):
            lines += _mapping_lines(f"{path}.", old[key], new[key])
        elif old[key] != new[key]:
            lines.append(f"{path}: {value_text(old[key])}{ARROW}{value_text(new[key])}")
    return lines


def _block_lines(path: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    old, new = _filled("block", old), _filled("block", new)
    if (old["type"], old["axis"]) != (new["type"], new["axis"]):
        return [f"{path}: {block_text(old)}{ARROW}{block_text(new)}"]
    keys = _block_keys(new["type"])
    return _mapping_lines(f"{path}.", {k: old[k] for k in keys}, {k: new[k] for k in keys})


def _stage_lines(path: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    old, new = _filled("stage", old), _filled("stage", new)
    lines = []
    if old["repeat"] != new["repeat"]:
        lines.append(f"{path}.repeat: {old['repeat']}{ARROW}{new['repeat']}")
    lines += _list_lines(f"{path}.blocks", old["blocks"], new["blocks"], _block_lines,
                         block_text)
    return lines


def _list_lines(path: str, old: list, new: list, compare, describe) -> list[str]:
    """Items compared by position; items on one side only are added or removed."""
    lines = []
    for i in range(max(len(old), len(new))):
        item = f"{path}[{i}]"
        if i >= len(new):
            lines.append(f"{item}: removed {describe(old[i])}")
        elif i >= len(old):
            lines.append(f"{item}: added {describe(new[i])}")
        else:
            lines += compare(item, old[i], new[i])
    return lines


def model_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The differences between two ``model`` sections of the config."""
    old, new = _filled("model", old), _filled("model", new)
    lines = _mapping_lines("", {k: v for k, v in old.items() if k != "stages"},
                           {k: v for k, v in new.items() if k != "stages"})
    return lines + _list_lines("stages", old["stages"], new["stages"], _stage_lines,
                               stage_text)


def describe_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What ``new`` changes from ``old``, two :func:`mbsnet.config.ablation_config` results:
    the model's differences, then the (merged) training settings' as ``training.KEY``.
    Empty when the two would train the same network the same way."""
    return (model_changes(old["model"], new["model"])
            + _mapping_lines("training.", old.get("training", {}), new.get("training", {})))
