"""Parameter counts, in total and per top-level module."""

from __future__ import annotations

from torch import nn


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
