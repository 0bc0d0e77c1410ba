"""How a run's float32 arithmetic is done on CUDA: deterministic kernels and TF32.

:func:`numerics` applies ``training.deterministic`` and ``training.tf32`` for the length of
a run and restores the previous settings afterwards (a run is a library call; tests and
notebooks run several in one process).

- ``deterministic``: PyTorch picks deterministic kernels where it has them and warns, once
  per kind, where it has none (``warn_only``: the MetricGAN discriminator's adaptive
  max-pool backward has no deterministic CUDA kernel, and an error there would stop every
  run); cuDNN is told to be deterministic and not to benchmark; cuBLAS gets a fixed
  workspace (``CUBLAS_WORKSPACE_CONFIG``, read when its first handle is made, so this runs
  before the model touches the GPU). Kernels outside PyTorch's reach, such as mamba_ssm's
  backward (atomic adds), stay non-deterministic.
- ``tf32``: float32 matrix products, convolutions and RNNs may use TF32 tensor cores
  (Ampere and newer), through the ``fp32_precision`` settings that replace the old
  ``allow_tf32`` flags; ``False`` asks for IEEE float32 in all three, which PyTorch would
  otherwise not do for cuDNN convolutions and RNNs.

Neither changes what the CPU computes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"
#: A cuBLAS workspace setting with which cuBLAS is deterministic (CUDA >= 10.2).
DETERMINISTIC_WORKSPACE = ":4096:8"
#: The backends whose float32 precision ``tf32`` sets (torch adds cudnn.conv and every
#: fp32_precision at run time, unknown to its type stubs).
_FP32_BACKENDS: tuple[Any, ...] = (torch.backends.cuda.matmul,
                                   torch.backends.cudnn.conv,  # type: ignore[attr-defined]
                                   torch.backends.cudnn.rnn)


@contextlib.contextmanager
def numerics(deterministic: bool, tf32: bool) -> Iterator[None]:
    """Apply the two settings inside the block (see the module docstring)."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             [backend.fp32_precision for backend in _FP32_BACKENDS],
             os.environ.get(CUBLAS_WORKSPACE))
    if deterministic:
        os.environ.setdefault(CUBLAS_WORKSPACE, DETERMINISTIC_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False
    for backend in _FP32_BACKENDS:
        backend.fp32_precision = "tf32" if tf32 else "ieee"
    try:
        yield
    finally:
        enabled, warn_only, cudnn_deterministic, benchmark, precisions, workspace = saved
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.backends.cudnn.benchmark = benchmark
        for backend, precision in zip(_FP32_BACKENDS, precisions, strict=True):
            backend.fp32_precision = precision
        if workspace is None:
            os.environ.pop(CUBLAS_WORKSPACE, None)
        else:
            os.environ[CUBLAS_WORKSPACE] = workspace
