"""Where tensors live: device selection, thread count and peak-memory readings."""

from __future__ import annotations

import os
import resource
import sys

import torch

from .errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def select_device(name: str = "auto", key: str = "training.device") -> torch.device:
    """``auto``: the first visible CUDA device if there is one, else the CPU.

    Visibility follows ``CUDA_VISIBLE_DEVICES`` (as set by SLURM's GPU allocation), so
    ``cuda`` always means ``cuda:0`` of the devices this process was given. ``key`` names
    the setting in error messages (a config key or a command-line flag).
    """
    if name not in DEVICE_CHOICES:
        raise ConfigError(f"{key}: '{name}' is not one of {', '.join(DEVICE_CHOICES)}")
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if name == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        build = "this PyTorch build has no CUDA support" if torch.version.cuda is None \
            else f"no CUDA device is visible{hint}"
        raise ConfigError(f"{key}: 'cuda' requested but {build}; "
                          "use device: auto or cpu")
    return torch.device("cpu")


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for intra-op parallelism (the job's core allocation)."""
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


def describe(device: torch.device) -> str:
    """A human-readable device name for logs and summaries, e.g. ``cuda:0 (NVIDIA A100)``."""
    if device.type == "cuda":
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA only; the CPU reading is process-wide)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: CUDA allocator peak on GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
