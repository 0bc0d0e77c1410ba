"""NativeScan: the selective scan on the CPU as compiled loops (``native.cpp``).

The C++ file holds the whole recurrence of one sequence, forward and backward, in vectors
over channels; it has no Python or PyTorch headers, so the system compiler (``$CXX``, else
``g++``, ``c++`` or ``clang++``) builds it in a few seconds with ``-march=native`` the first
time it is needed on a machine, into ``$MBSNET_CACHE`` (default ``~/.cache/mbsnet``) under a
name keyed by the source, the compiler and the CPU, so a cluster of unlike nodes sharing a
home directory builds once per kind of CPU. The build goes to a temporary file, renamed when
complete: processes building at once cannot load half a library.

Where it cannot build or load, :func:`library` says why, and :mod:`mbsnet.models.scan` runs
the chunked scan instead. Where a call cannot run compiled code (not float32 on the CPU,
meta tensors, or inside a TorchDispatchMode such as FlopCounterMode, which must see the
ops), the call runs the chunked scan.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from . import modes as sm
from .chunked import dispatch_mode_active, scan_backward, scan_forward

SOURCE = Path(__file__).with_name("native.cpp")
CACHE_VAR = "MBSNET_CACHE"
FLAGS = ("-O3", "-std=gnu++17", "-shared", "-fPIC", "-fno-math-errno")
TUNE = ("-march=native",)
"""Tried first; without it where the compiler refuses it (the baseline instruction set)."""

log = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """The native scan could not be built or loaded."""


def cache_dir() -> Path:
    """Where built libraries are kept: $MBSNET_CACHE, else $XDG_CACHE_HOME/mbsnet or
    ~/.cache/mbsnet."""
    if os.environ.get(CACHE_VAR):
        return Path(os.environ[CACHE_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mbsnet"


def compiler() -> str:
    """The C++ compiler: $CXX, else the first of g++, c++, clang++ on PATH."""
    if os.environ.get("CXX"):
        return os.environ["CXX"]
    for name in ("g++", "c++", "clang++"):
        if shutil.which(name):
            return name
    raise BuildError("no C++ compiler: set CXX or install g++")


def _cpu_identity() -> str:
    """The CPU's model and feature flags (what -march=native compiles for)."""
    text = platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return text
    for key in ("model name", "flags", "Features"):
        for line in info.splitlines():
            if line.startswith(key):
                text += "\n" + line
                break
    return text


def _compiler_version(cxx: str) -> str:
    try:
        done = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BuildError(f"C++ compiler {cxx!r} does not run: {error}") from error
    if done.returncode != 0:
        raise BuildError(f"C++ compiler {cxx!r} --version failed: {done.stderr.strip()}")
    return done.stdout


def library_path(cxx: str) -> Path:
    """The cached library for this source, compiler and CPU."""
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), _compiler_version(cxx).encode(), " ".join(FLAGS).encode(),
                 _cpu_identity().encode()):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / f"scan-{key.hexdigest()[:16]}.so"


def build(target: Path, cxx: str) -> None:
    """Compile SOURCE into ``target`` (through a temporary file renamed when complete)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        errors = ""
        for tune in (TUNE, ()):
            command = [cxx, *FLAGS, *tune, str(SOURCE), "-o", tmp]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as error:
                raise BuildError(f"{' '.join(command)}: {error}") from error
            if done.returncode == 0:
                os.replace(tmp, target)
                return
            errors = done.stderr.strip()[-2000:]
        raise BuildError(f"{' '.join(command)} failed:\n{errors}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> tuple[ctypes.CDLL | None, str]:
    """(the loaded library or None, why): builds it on first use on this machine."""
    try:
        cxx = compiler()
        path = library_path(cxx)
        if not path.exists():
            start = time.perf_counter()
            build(path, cxx)
            log.info("built the native selective scan in %.1f s: %s",
                     time.perf_counter() - start, path)
        lib = ctypes.CDLL(str(path))
    except (BuildError, OSError) as error:
        return None, str(error)
    index, real = ctypes.c_int64, ctypes.c_void_p
    lib.mbsnet_scan_width.restype = ctypes.c_int
    lib.mbsnet_scan_forward.argtypes = [index] * 4 + [ctypes.c_int] + [real] * 6
    lib.mbsnet_scan_forward.restype = None
    lib.mbsnet_scan_backward.argtypes = [index] * 4 + [ctypes.c_int] + [real] * 11
    lib.mbsnet_scan_backward.restype = None
    return lib, f"{path} ({lib.mbsnet_scan_width()} floats a vector)"


def runs_here(*tensors: torch.Tensor) -> bool:
    """Whether a call on these tensors can run the compiled scan."""
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and not dispatch_mode_active() and library()[0] is not None)


def _ranges(count: int) -> list[tuple[int, int]]:
    """Contiguous ranges of sequences, one per torch thread (at most one per sequence)."""
    parts = max(1, min(torch.get_num_threads(), count))
    bounds = [count * i // parts for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]


def _run(call, ranges: list[tuple[int, int]]) -> list:
    """call(lo, hi) for every range, on Python threads (ctypes releases the GIL)."""
    if len(ranges) == 1:
        return [call(*ranges[0])]
    with concurrent.futures.ThreadPoolExecutor(len(ranges)) as pool:
        return list(pool.map(lambda r: call(*r), ranges))


def _at(t: torch.Tensor, sequence: int) -> int:
    """The address of ``sequence``'s first element in a contiguous [count, ...] tensor."""
    return t.data_ptr() + sequence * t.stride(0) * t.element_size()


def native_forward(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, mode: str, clamps: sm.Clamps) -> torch.Tensor | None:
    """y = C·h for every step (no autograd), or None where the call cannot run here."""
    if not runs_here(x, delta, A, B, C):
        return None
    lib = library()[0]
    assert lib is not None
    x, delta, B, C = (t.contiguous() for t in (x, delta, B, C))
    At = A.t().contiguous()
    count, length, dim = x.shape
    y = torch.empty_like(x)

    def call(lo: int, hi: int) -> None:
        lib.mbsnet_scan_forward(hi - lo, length, dim, At.shape[0], int(mode == sm.AS_CODED),
                                _at(x, lo), _at(delta, lo), At.data_ptr(), _at(B, lo),
                                _at(C, lo), _at(y, lo))

    _run(call, _ranges(count))
    return y


def native_backward(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                    C: torch.Tensor, D: torch.Tensor, gy: torch.Tensor,
                    keep: torch.Tensor | None, mode: str,
                    clamps: sm.Clamps) -> tuple[torch.Tensor, ...]:
    """Gradients (x, Δ, A, B, C) of the scan (``keep``: see
    :func:`~mbsnet.models.scan.modes.finish_`)."""
    lib = library()[0]
    assert lib is not None  # the forward ran here
    x, delta, B, C = (t.contiguous() for t in (x, delta, B, C))
    g = sm.output_grad(gy, keep).contiguous()
    At = A.t().contiguous()
    count, length, dim = x.shape
    gx, gdelta, gB, gC = (torch.empty_like(t) for t in (x, delta, B, C))

    def call(lo: int, hi: int) -> torch.Tensor:
        gAt = torch.empty_like(At)  # this range's share
        lib.mbsnet_scan_backward(hi - lo, length, dim, At.shape[0], int(mode == sm.AS_CODED),
                                 _at(x, lo), _at(delta, lo), At.data_ptr(), _at(B, lo),
                                 _at(C, lo), _at(g, lo), _at(gx, lo), _at(gdelta, lo),
                                 gAt.data_ptr(), _at(gB, lo), _at(gC, lo))
        return gAt

    shares = _run(call, _ranges(count))
    gA = functools.reduce(torch.add, shares).t()
    return sm.add_skip_grad_(gx, g, D, mode), gdelta, gA, gB, gC


class NativeScan(torch.autograd.Function):
    """The selective scan, in either mode, with exact gradients, as compiled loops; saves
    only its inputs (and, as coded, where the output clamp held). Calls that cannot run the
    compiled code run :class:`~mbsnet.models.scan.chunked.ChunkedScan`'s.

    apply(x, delta, A, B, C, D, mode); the layout of :func:`mbsnet.models.scan.selective_scan`.
    """

    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, mode):
        return scan_forward(ctx, x, delta, A, B, C, D, mode, whole=native_forward)

    @staticmethod
    def backward(ctx, gy):
        return scan_backward(ctx, gy, whole=native_backward)
