"""Load, validate and resolve config.yaml against the package's JSON schema."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import ConfigError

SCHEMA_FILE = "config.schema.yaml"


def load_schema() -> dict:
    """The config schema shipped in the package (also used by the Snakemake workflow)."""
    text = resources.files("mbsnet.schemas").joinpath(SCHEMA_FILE).read_text()
    return yaml.safe_load(text)


def _with_defaults(validator_class):
    """A validator class that also fills in `default` values of the schema."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def schema_definition(name: str) -> dict:
    """One definition of the config schema (``$defs``, e.g. ``model``) as a schema of its
    own, its references intact: what a part of a config is checked against on its own."""
    schema = load_schema()
    return {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{name}"}


def defaults_validator(schema: Mapping[str, Any]) -> jsonschema.protocols.Validator:
    """A validator of ``schema`` that fills in the schema's ``default`` values as it checks
    (into the instance it validates)."""
    return _with_defaults(jsonschema.Draft202012Validator)(schema)


def _key_path(error: jsonschema.ValidationError, prefix: str = "") -> str:
    path = ".".join([prefix] * bool(prefix) + [str(p) for p in error.absolute_path])
    return path or "<top level>"


def _override_errors(resolved: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Every ablation's training overrides, merged over ``training``, checked like it.

    The merged section is what the ablation trains with, so it must satisfy the same
    schema (unknown keys, types, ranges); errors name ``ablations.NAME.training.KEY``.
    """
    validator = jsonschema.Draft202012Validator(schema["properties"]["training"])
    lines = []
    for name, entry in resolved["ablations"].items():
        if not entry.get("training"):
            continue
        merged = _deep_merge(resolved["training"], entry["training"])
        prefix = f"ablations.{name}.training"
        for error in sorted(validator.iter_errors(merged), key=lambda e: list(e.path)):
            lines.append(f"  {_key_path(error, prefix)}: {error.message}")
    return lines


def validate_config(config: Mapping[str, Any], source: str = "config") -> dict:
    """Validate a config mapping, fill defaults, and return the resolved copy.

    Raises ConfigError naming the offending key (e.g. ``training.epochz``).
    """
    resolved = copy.deepcopy(dict(config))
    schema = load_schema()
    validator = defaults_validator(schema)
    errors = sorted(validator.iter_errors(resolved), key=lambda e: list(e.absolute_path))
    lines = [f"  {_key_path(e)}: {e.message}" for e in errors]
    if not errors:
        lines = _override_errors(resolved, schema)
    if lines:
        raise ConfigError(f"{source} is not a valid mbsnet config:\n" + "\n".join(lines[:10]))
    _check_validation_split(resolved, source)
    baseline = resolved.get("report", {}).get("baseline")
    named = "baseline" in (config.get("report") or {})
    if baseline is not None and baseline not in resolved["ablations"] and named:
        raise ConfigError(
            f"{source}: report.baseline '{baseline}' is not one of the ablations "
            f"({', '.join(resolved['ablations'])})"
        )
    _check_lineage(resolved, source)
    return resolved


def ablation_parents(config: Mapping[str, Any]) -> dict[str, str]:
    """Each ablation's parent in the ablation study, the ablation it is one change away
    from: its ``parent``, else ``report.baseline`` when that is another configured
    ablation. Ablations with neither (the baseline itself, usually) are roots, absent here.
    """
    ablations = config["ablations"]
    baseline = (config.get("report") or {}).get("baseline")
    parents = {}
    for name, entry in ablations.items():
        parent = entry.get("parent")
        if parent is None and baseline in ablations and baseline != name:
            parent = baseline
        if parent is not None:
            parents[name] = parent
    return parents


def _check_lineage(resolved: Mapping[str, Any], source: str) -> None:
    """Every ``parent`` names a configured ablation, and following parents never loops."""
    ablations = resolved["ablations"]
    for name, entry in ablations.items():
        parent = entry.get("parent")
        if parent is not None and parent not in ablations:
            raise ConfigError(f"{source}: ablations.{name}.parent '{parent}' is not one of the "
                              f"ablations ({', '.join(ablations)})")
    parents = ablation_parents(resolved)
    for start in parents:
        chain = [start]                     # child, its parent, that one's parent, ...
        while chain[-1] in parents:
            chain.append(parents[chain[-1]])
            if chain[-1] in chain[:-1]:
                loop = chain[chain.index(chain[-1]):]
                named = next(n for n in loop if ablations[n].get("parent") is not None)
                implicit = [n for n in loop[:-1] if ablations[n].get("parent") is None]
                why = (f" ({', '.join(implicit)} has no parent, so it is compared with "
                       f"report.baseline)") if implicit else ""
                raise ConfigError(
                    f"{source}: ablations.{named}.parent: the lineage is a cycle, "
                    f"{' → '.join(reversed(loop))}{why}; each chain of parents must end at an "
                    "ablation without one")


def _check_validation_split(resolved: Mapping[str, Any], source: str) -> None:
    """Training on ``validate_on: valid`` needs held-out speakers; say so before any work."""
    held_out = resolved["data"]["valid_speakers"]
    if held_out:
        return
    for name in resolved["ablations"]:
        if ablation_config(resolved, name)["training"]["validate_on"] == "valid":
            raise ConfigError(
                f"{source}: data.valid_speakers is {held_out!r}, so there is no validation "
                f"split, but ablation '{name}' validates on it (training.validate_on: valid); "
                "hold out at least one training speaker or set training.validate_on: test")


def load_config(path: str | Path) -> dict:
    """Read a YAML config file, validate it and fill defaults."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return validate_config(raw, source=str(path))


def ablation_config(config: Mapping[str, Any], name: str) -> dict:
    """The resolved settings of one ablation, with its training overrides merged in."""
    ablations = config["ablations"]
    if name not in ablations:
        raise ConfigError(f"unknown ablation '{name}'; configured: {', '.join(ablations)}")
    entry = ablations[name]
    training = _deep_merge(config.get("training", {}), entry.get("training", {}))
    return {"name": name, "claimed_params": entry.get("claimed_params"),
            "model": copy.deepcopy(entry["model"]), "training": training}


def _deep_merge(base: Mapping, override: Mapping) -> dict:
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of a resolved config (for provenance)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
