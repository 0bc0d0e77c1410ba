"""Peak memory of one training step, isolated from everything else in the process.

CUDA: ``torch.cuda.max_memory_allocated`` over the step (the peak stats are reset first),
i.e. every live tensor: weights, gradients, optimizer state and activations.

CPU has no allocator peak counter, so the step runs under the PyTorch profiler with
``profile_memory=True``: every allocation and free of the CPU allocator during the step
is recorded in order, and the peak of their running sum is added to the tensors already
alive when the step starts (weights, gradients, optimizer state, the batch). That is the
CPU counterpart of the CUDA figure. As a cross-check the process's resident set is read
too: its high-water mark over the step (Linux: reset through /proc/self/clear_refs) and
its size before the step; the RSS also holds the interpreter, libraries and freed-but-
cached heap, so it is reported beside the tensor figure, not used for the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.autograd import DeviceType

from ..device import reset_peak_memory

MiB = 2**20

CUDA_METHOD = ("torch.cuda.max_memory_allocated over one full training step after "
               "torch.cuda.reset_peak_memory_stats (weights, gradients, optimizer state, "
               "activations, discriminator step)")
CPU_METHOD = ("PyTorch profiler (profile_memory=True) over one full training step: peak of "
              "the running sum of CPU allocator allocations/frees during the step, plus the "
              "tensors alive at its start (weights, gradients, Adam state, batch); the "
              "CPU counterpart of torch.cuda.max_memory_allocated. Process RSS "
              "(high-water mark of the step, and before it) reported alongside as a "
              "cross-check")


@dataclass
class MemoryReading:
    """The peak of one step in MiB, how it was measured, and supporting figures."""

    peak_mb: float
    method: str
    details: dict = field(default_factory=dict)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by the distinct storages behind ``tensors`` (shared storage counted once)."""
    storages: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def training_state(modules: Iterable[nn.Module],
                   optimizers: Iterable[torch.optim.Optimizer]) -> list[torch.Tensor]:
    """Every tensor a training loop keeps between steps: weights, buffers, gradients and
    optimizer state."""
    tensors: list[torch.Tensor] = []
    for module in modules:
        for p in module.parameters():
            tensors.append(p)
            if p.grad is not None:
                tensors.append(p.grad)
        tensors.extend(module.buffers())
    for optimizer in optimizers:
        for state in optimizer.state.values():
            tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
    return tensors


def measure_step_memory(step: Callable[[], object], device: torch.device,
                        live: Iterable[torch.Tensor] = ()) -> MemoryReading:
    """Run ``step()`` once and return its peak memory.

    ``live``: the tensors alive before the step (CPU only; CUDA's allocator knows them).
    """
    if device.type == "cuda":
        return _measure_cuda(step, device)
    return _measure_cpu(step, list(live))


def _measure_cuda(step: Callable[[], object], device: torch.device) -> MemoryReading:
    torch.cuda.synchronize(device)
    reset_peak_memory(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return MemoryReading(peak / MiB, CUDA_METHOD, {
        "allocated_before_step_mb": before / MiB,
        "reserved_peak_mb": torch.cuda.max_memory_reserved(device) / MiB,
    })


def _measure_cpu(step: Callable[[], object], live: list[torch.Tensor]) -> MemoryReading:
    base = tensor_bytes(live)
    rss_before = _rss_kib("VmRSS")
    hwm_reset = _reset_rss_peak()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        step()
    rss_peak = _rss_kib("VmHWM") if hwm_reset else None
    step_peak = allocation_peak(prof)
    return MemoryReading((base + step_peak) / MiB, CPU_METHOD, {
        "tensors_before_step_mb": base / MiB,
        "step_allocation_peak_mb": step_peak / MiB,
        "rss_before_step_mb": None if rss_before is None else rss_before / 1024,
        "rss_peak_mb": None if rss_peak is None else rss_peak / 1024,
    })


def allocation_peak(prof: torch.profiler.profile) -> int:
    """Peak of the running sum of the CPU allocations (+) and frees (-) a profiler recorded.

    Frees of memory allocated before profiling started are not recorded by the profiler,
    so the figure never goes below zero and does not credit them.
    """
    results = None if prof.profiler is None else prof.profiler.kineto_results
    if results is None:
        raise ValueError("the profiler has recorded nothing yet: read it after its block")
    # torch's stub of the event lacks nbytes(), which the memory events have
    events = sorted(((e.start_ns(), e.nbytes())  # type: ignore[attr-defined]
                     for e in results.events()
                     if e.name() == "[memory]" and e.device_type() == DeviceType.CPU),
                    key=lambda event: event[0])   # stable: same-time events keep their order
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def _status_path() -> Path:
    return Path("/proc/self/status")


def _rss_kib(key: str) -> int | None:
    """A ``VmRSS`` / ``VmHWM`` line of /proc/self/status in KiB (None off Linux)."""
    try:
        for line in _status_path().read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_rss_peak() -> bool:
    """Reset the process's RSS high-water mark (Linux >= 4.0); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
