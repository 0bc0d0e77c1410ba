"""Where tensors live: device selection (and the claim of a CUDA device), thread count and
peak-memory readings."""

from __future__ import annotations

import contextlib
import os
import resource
import sys

import torch

from .errors import ConfigError
from .gpu_claim import claim_device, physical_id

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def select_device(name: str = "auto", key: str = "training.device") -> torch.device:
    """``auto``: a CUDA device if one is visible, else the CPU; ``cuda``: a CUDA device or
    an error; ``cpu``: the CPU.

    The CUDA device is claimed for the rest of the process (:mod:`mbsnet.gpu_claim`): the
    one a scheduler assigned, else a visible device no other job holds, waiting while all
    are taken, so concurrent jobs run on distinct GPUs. ``key`` names the setting in
    error messages (a config key or a command-line flag).
    """
    if device_type(name, key) == "cpu":
        return torch.device("cpu")
    return use_cuda(claim_device().index)


def device_type(name: str = "auto", key: str = "training.device") -> str:
    """The kind of device :func:`select_device` picks for ``name``, ``"cuda"`` or ``"cpu"``,
    without claiming one; the same ConfigError for a bad or unavailable choice."""
    if name not in DEVICE_CHOICES:
        raise ConfigError(f"{key}: '{name}' is not one of {', '.join(DEVICE_CHOICES)}")
    if name == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if name == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        build = "this PyTorch build has no CUDA support" if torch.version.cuda is None \
            else f"no CUDA device is visible{hint}"
        raise ConfigError(f"{key}: 'cuda' requested but {build}; "
                          "use device: auto or cpu")
    return "cpu"


def use_cuda(index: int) -> torch.device:
    """``cuda:index``, made the current device: code that does not name a device
    (libraries' kernels, synchronize()) then uses it instead of creating a context on
    cuda:0."""
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    return device


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off for ``device_type``; a no-op where the device type has no
    autocast (``meta``, on which the placement tests run the model)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for intra-op parallelism (the job's core allocation)."""
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


def describe(device: torch.device) -> str:
    """A human-readable device name for logs and summaries, e.g. ``cuda:0 (NVIDIA A100)``,
    or ``cuda:1 = GPU 5 (NVIDIA A100)`` when ``CUDA_VISIBLE_DEVICES`` renumbers the devices."""
    if device.type == "cuda":
        index = device.index or 0
        physical = physical_id(index)
        where = f"cuda:{index}" if physical == str(index) else f"cuda:{index} = GPU {physical}"
        return f"{where} ({torch.cuda.get_device_name(device)})"
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
