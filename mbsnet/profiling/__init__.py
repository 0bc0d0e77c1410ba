"""Pre-flight profile of an ablation: parameters, inference FLOPs, peak training memory,
step time and real-time factor, checked against the memory budget before training."""

from .flops import FlopCount, count_inference_flops, lstm_flops, scan_flops
from .memory import MemoryReading, measure_step_memory, training_state
from .profile import (
    Measurements,
    MemoryBudgetError,
    ProfileOptions,
    assemble_profile,
    check_budget,
    measure_ablation,
    probe_batch,
    profile_ablation,
)
from .timing import inference_rtf, median_seconds

__all__ = [
    "FlopCount", "Measurements", "MemoryBudgetError", "MemoryReading", "ProfileOptions",
    "assemble_profile", "check_budget", "count_inference_flops", "inference_rtf", "lstm_flops",
    "measure_ablation", "measure_step_memory", "median_seconds", "probe_batch",
    "profile_ablation", "scan_flops", "training_state",
]
