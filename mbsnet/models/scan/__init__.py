"""The Mamba-1 (S6) selective scan.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * x_t
    y_t = C_t . h_t + D * x_t

That is ``mode="exact"``. ``mode="as_coded"`` is the arithmetic of the original research
code: six clamps (on delta*A, exp(delta*A), delta, delta*B, h after every step, y) and the
skip gain ``dim`` in place of the learned D; :mod:`mbsnet.models.scan.modes` states both.

Layout (channels last, as the Linear layers produce it):
    x, delta: [batch, length, dim]   (delta already positive, i.e. after softplus)
    A:        [dim, d_state]         (negative: A = -exp(A_log))
    B, C:     [batch, length, d_state]
    D:        [dim]
    returns y [batch, length, dim] in float32.

:func:`selective_scan` is what the Mamba block calls; :func:`scan_implementation` names the
implementation it runs:
- ``mamba_ssm``: the fused CUDA kernel of the ``mamba_ssm`` package, on CUDA in exact mode,
  when its compiled extension ``selective_scan_cuda`` imports (:func:`mamba_ssm_probe`);
- ``parallel`` (:mod:`mbsnet.models.scan.parallel`): a parallel prefix scan over time in a few
  large operations per call, CUDA's fallback (and as_coded's scan on CUDA);
- ``native`` (:mod:`mbsnet.models.scan.native`): the recurrence as compiled loops, built
  from C++ on first use with the system compiler, on the CPU;
- ``chunked`` (:mod:`mbsnet.models.scan.chunked`): the step-by-step scan in cache-sized chunks
  and sub-batches, on the CPU where the native scan cannot be built (and for the calls it
  cannot run: not float32, meta tensors, inside a TorchDispatchMode).
The PyTorch ones compute exact gradients and save no [batch, length, dim, d_state] tensor:
backward recomputes the states. The environment variable ``MBSNET_SCAN`` = ``auto`` (the
default) | ``mamba_ssm`` | ``parallel`` | ``native`` | ``chunked`` forces one.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable

import torch

from ...device import autocast_off
from .chunked import ChunkedScan
from .modes import AS_CODED, EXACT, SCAN_MODES, check_mode
from .native import NativeScan
from .native import library as native_library
from .parallel import ParallelScan

__all__ = ["SCAN_MODES", "ChunkedScan", "NativeScan", "ParallelScan", "mamba_ssm_probe",
           "scan_implementation", "selective_scan", "selective_scan_reference"]

ENV_VAR = "MBSNET_SCAN"
CHOICES = ("auto", "mamba_ssm", "parallel", "native", "chunked")
FUNCTIONS = {"chunked": ChunkedScan, "native": NativeScan, "parallel": ParallelScan}


def selective_scan_reference(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                             B: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
                             mode: str = EXACT) -> torch.Tensor:
    """Plain sequential scan, step by step, in plain autograd: the ground truth for tests
    (slow). As coded, the clamps are written out as the original code has them."""
    check_mode(mode)
    batch, length, dim = x.shape
    h = x.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        dt, xt = delta[:, t, :, None], x[:, t, :, None]
        Bt, Ct = B[:, t, None, :], C[:, t, None, :]
        if mode == EXACT:
            h = torch.exp(dt * A) * h + (dt * xt) * Bt
        else:
            A_bar = torch.clamp(torch.exp(torch.clamp(dt * A, -10, 0)), 0, 0.999)
            B_bar = torch.clamp(torch.clamp(dt, 0, 1) * Bt, -10, 10)
            h = torch.clamp(A_bar * h + B_bar * xt, -100, 100)
        ys.append((h * Ct).sum(-1))
    y = torch.stack(ys, dim=1)
    if mode == EXACT:
        return y + x * D
    return torch.clamp(y + dim * x, -50, 50)


def scan_implementation(device: torch.device, mode: str = EXACT) -> str:
    """The name of the scan :func:`selective_scan` runs on ``device`` in ``mode``:
    ``mamba_ssm``, ``parallel``, ``native`` or ``chunked`` (see the module docstring).

    Raises ValueError for an unknown mode or ``MBSNET_SCAN`` value, RuntimeError when
    ``MBSNET_SCAN=mamba_ssm`` or ``native`` cannot run. In ``auto``, the first fallback (to
    ``parallel`` on CUDA, ``chunked`` on the CPU) warns once per reason why.
    """
    check_mode(mode)
    device = torch.device(device)
    forced = _forced()
    if forced == "mamba_ssm":
        _check_mamba_ssm_can_run(device, mode)
    elif forced == "native":
        lib, reason = native_library()
        if lib is None:
            raise RuntimeError(f"{ENV_VAR}=native, but the native scan cannot run: {reason}")
    if forced != "auto":
        return forced
    return _automatic(device, mode)


def _check_mamba_ssm_can_run(device: torch.device, mode: str) -> None:
    """Raise RuntimeError (naming MBSNET_SCAN) unless the forced fused kernel can run."""
    if mode != EXACT:
        raise RuntimeError(f"{ENV_VAR}=mamba_ssm cannot run mode {mode!r}: the fused "
                           "kernel has no clamps; unset it or use parallel/chunked")
    if device.type != "cuda":
        raise RuntimeError(f"{ENV_VAR}=mamba_ssm needs CUDA tensors, got device {device}")
    fn, reason = mamba_ssm_probe()
    if fn is None:
        raise RuntimeError(f"{ENV_VAR}=mamba_ssm, but mamba_ssm cannot run: {reason}")


def _automatic(device: torch.device, mode: str) -> str:
    """The best scan that can run (``auto``), warning once per reason for a fallback."""
    if device.type != "cuda":
        lib, reason = native_library()
        if lib is not None:
            return "native"
        _warn_fallback("chunked", f"the native scan cannot be built: {reason}")
        return "chunked"
    if mode == AS_CODED:
        reason = "as_coded clamps need the fallback"
    else:
        fn, reason = mamba_ssm_probe()
        if fn is not None:
            return "mamba_ssm"
    _warn_fallback("parallel", f"not mamba_ssm's fused kernel: {reason}")
    return "parallel"


def selective_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                   B: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
                   mode: str = EXACT) -> torch.Tensor:
    """The scan the Mamba block calls; always computed in float32, even under autocast.

    As coded, D receives no gradient (it is unused there).
    """
    name = scan_implementation(x.device, mode)
    with autocast_off(x.device.type):
        x, delta, A, B, C, D = (t.float() for t in (x, delta, A, B, C, D))
        if name == "mamba_ssm":
            return _cuda_scan(x, delta, A, B, C, D)
        return FUNCTIONS[name].apply(x, delta, A, B, C, D, mode)


@functools.cache
def mamba_ssm_probe() -> tuple[Callable | None, str]:
    """(mamba_ssm's fused ``selective_scan_fn`` or None, why).

    The Python package imports without its compiled kernel when it was installed without the
    CUDA build (opt-in in newer releases: ``MAMBA_KEEP_CUDA_BUILD=TRUE``), and then fails on
    the first forward; so the extension ``selective_scan_cuda`` it calls must import too.
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] == "mamba_ssm":
            return None, f"mamba_ssm not installed: {error}"
        return None, f"mamba_ssm does not import: {error}"
    except Exception as error:  # e.g. built against another torch or CUDA
        return None, f"mamba_ssm does not import: {type(error).__name__}: {error}"
    try:
        import selective_scan_cuda  # noqa: F401  (the extension the interface calls)
    except Exception as error:
        return None, f"selective_scan_cuda missing: {type(error).__name__}: {error}"
    return selective_scan_fn, "mamba_ssm and its selective_scan_cuda kernel import"


def _forced() -> str:
    """MBSNET_SCAN's value (auto when unset or empty)."""
    value = os.environ.get(ENV_VAR, "").strip() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV_VAR} must be one of {', '.join(CHOICES)}; got {value!r}")
    return value


@functools.cache
def _warn_fallback(name: str, reason: str) -> None:
    warnings.warn(f"selective scan: using mbsnet's {name} scan ({reason})", RuntimeWarning,
                  stacklevel=5)


def _cuda_scan(x, delta, A, B, C, D):
    """The fused CUDA kernel, in its (batch, dim, length) / (batch, d_state, length) layout."""
    fn, why = mamba_ssm_probe()
    if fn is None:
        raise RuntimeError(f"the fused CUDA scan is unavailable: {why}")
    y = fn(x.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D)
    return y.transpose(1, 2).float()
