"""What an ablation costs: the report's cost columns (label, unit, format, direction, where
each value comes from) and each system's values, read from profile.json and
train_summary.json."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .loading import Missing, System, record_number


@dataclass(frozen=True)
class CostSpec:
    """One cost column of the headline (and summary.tsv)."""

    name: str                           # the column in summary.tsv
    label: str                          # the headline's column header
    style: str                          # how values are written: a key of formatting.STYLES
    unit: str = ""                      # of the values as summary.tsv holds them
    #: True: the smallest value is the best; None: no better direction (a claim, a ratio)
    lower_is_better: bool | None = True
    from_profile: bool = False          # read as is from profile.json's key of this name
    in_steps: bool = False              # a step's change of it is shown (child − parent)
    claim_checked: bool = False         # flagged when measured params are off the claim
    axis_label: str = ""                # in figures
    axis_divisor: float = 1.0           # figures plot value / axis_divisor
    step_panel: int = 0                 # its place in the step figure's cost row; 0: none
    efficiency_panel: bool = False      # an x axis of the efficiency figure

    def better(self, difference: float) -> bool:
        """Whether ``difference`` (new minus old) is an improvement: a saving, for a cost
        with a direction."""
        if self.lower_is_better is None:
            return False
        return difference < 0 if self.lower_is_better else difference > 0


#: every cost column, in the headline's order
COST_SPECS: dict[str, CostSpec] = {spec.name: spec for spec in (
    CostSpec("params", "Params", "count", in_steps=True, claim_checked=True,
             axis_label="parameters (M)", axis_divisor=1e6, step_panel=1,
             efficiency_panel=True),
    CostSpec("claimed_params", "Claimed", "count", lower_is_better=None),
    CostSpec("params_ratio", "Measured / claimed", "ratio", lower_is_better=None,
             claim_checked=True),
    CostSpec("macs_per_second", "MACs / s audio", "count", unit="MAC/s", from_profile=True,
             in_steps=True, axis_label="GMAC per second of audio", axis_divisor=1e9,
             step_panel=2),
    CostSpec("peak_train_memory_mb", "Peak train mem (MB)", "grouped", unit="MB",
             from_profile=True, in_steps=True, axis_label="peak training memory (MB)",
             efficiency_panel=True),
    CostSpec("train_step_seconds", "Train step (s)", "general", unit="s", from_profile=True,
             in_steps=True),
    CostSpec("inference_rtf", "RTF", "general", from_profile=True, in_steps=True),
    CostSpec("train_wall_seconds", "Train wall time (min:s)", "min:s", unit="s"),
)}

#: |measured / claimed - 1| above this flags a parameter count mismatch.
PARAMS_TOLERANCE = 0.10


def system_costs(system: System) -> dict[str, float | Missing | None]:
    """Every cost of ``system``: a number, why there is none, or None where it does not
    apply (the noisy input; the claim and ratio of an ablation the config claims nothing
    for). The costs read as is from profile.json come first."""
    if system.is_noisy:
        return {c: None for c in COST_SPECS}
    profile = system.profile
    costs: dict[str, float | Missing | None] = {
        spec.name: record_number(profile, "profile.json", spec.name)
        for spec in COST_SPECS.values() if spec.from_profile}
    summaries = [r.train_summary for r in system.runs if isinstance(r.train_summary, dict)]
    params = costs["params"] = _measured_params(profile, summaries)
    # No claim in the config is not a missing result: the cells stay empty ("—").
    claimed = None if system.claimed_params is None else float(system.claimed_params)
    costs["claimed_params"] = claimed
    if isinstance(params, Missing):
        costs["params_ratio"] = params
    else:
        costs["params_ratio"] = None if claimed is None else params / claimed
    costs["train_wall_seconds"] = _wall_seconds(system, summaries)
    return costs


def _measured_params(profile: dict | Missing | None, summaries: list[dict]) -> float | Missing:
    """profile.json's count, else the first train_summary.json's (it records it too)."""
    params = record_number(profile, "profile.json", "params", "total")
    if isinstance(params, Missing) and summaries:
        from_training = record_number(summaries[0], "train_summary.json", "params")
        return from_training if isinstance(from_training, float) else params
    return params


def _wall_seconds(system: System, summaries: list[dict]) -> float | Missing:
    """The mean training wall time over the seeds that record it."""
    walls = [w for w in (record_number(s, "train_summary.json", "wall_seconds")
                         for s in summaries) if isinstance(w, float)]
    if walls:
        return float(np.mean(walls))
    return next((r.train_summary for r in system.runs if isinstance(r.train_summary, Missing)),
                Missing("no wall_seconds in train_summary.json"))
