"""Parameter counts, in total and per top-level module, of one network or of every
configured ablation and the discriminator (`mbsnet params`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from .discriminator import Discriminator
from .network import build_model


def count_parameters(module: nn.Module) -> dict:
    """``{"total": n, "per_module": {child name: n}}`` over trainable parameters.

    Parameters registered directly on ``module`` (not in a child) appear under
    ``"(own)"``; the per-module counts always add up to the total.
    """
    per_module = {name: sum(p.numel() for p in child.parameters() if p.requires_grad)
                  for name, child in module.named_children()}
    own = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
    if own:
        per_module["(own)"] = own
    return {"total": sum(per_module.values()), "per_module": per_module}


def parameter_report(module: nn.Module, claimed: int | None = None) -> dict:
    """:func:`count_parameters` plus the claimed figure and measured/claimed ratio
    (both None without a claim): the ``params`` entry of profile.json."""
    counts = count_parameters(module)
    ratio = counts["total"] / claimed if claimed else None
    return {**counts, "claimed": claimed, "ratio": ratio}


def config_parameters(config: Mapping[str, Any]) -> dict:
    """``{"ablations": {name: params report}, "discriminator": {...}}`` for a resolved
    config: every ablation's network built from its model config, and the discriminator
    of ``training.discriminator_ndf``."""
    ablations = {}
    for name, entry in config["ablations"].items():
        model = build_model(entry["model"])
        ablations[name] = parameter_report(model, entry.get("claimed_params"))
    ndf = config.get("training", {}).get("discriminator_ndf", 16)
    discriminator = {"ndf": ndf, **parameter_report(Discriminator(ndf))}
    return {"ablations": ablations, "discriminator": discriminator}


def format_table(counts: Mapping[str, Any]) -> str:
    """:func:`config_parameters` as text: a line per network with its total (and claim),
    then one indented line per module."""
    lines = []
    for name, report in counts["ablations"].items():
        claim = ""
        if report["claimed"]:
            claim = f"  (claimed {report['claimed']:,}; measured/claimed {report['ratio']:.2f})"
        lines.append(f"{name}: {report['total']:,} parameters{claim}")
        lines += [f"    {module:<12}{n:>12,}" for module, n in report["per_module"].items()]
    disc = counts["discriminator"]
    lines.append(f"discriminator (ndf {disc['ndf']}): {disc['total']:,} parameters")
    lines += [f"    {module:<12}{n:>12,}" for module, n in disc["per_module"].items()]
    return "\n".join(lines)
