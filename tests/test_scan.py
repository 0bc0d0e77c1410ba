"""The selective scan: exactness against the sequential reference, gradients, dtype and memory."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mbsnet import scan
from mbsnet.scan import ChunkedScan, selective_scan, selective_scan_reference

ROOT = Path(__file__).resolve().parents[1]


def make_inputs(batch, length, dim, d_state, dtype=torch.float32, seed=0):
    """Inputs shaped and scaled as the Mamba block produces them (Δ > 0, A < 0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, dim, generator=g, dtype=dtype)
    noise = torch.randn(batch, length, dim, generator=g, dtype=dtype)
    delta = torch.nn.functional.softplus(noise - 1)
    A = -torch.exp(torch.randn(dim, d_state, generator=g, dtype=dtype))
    B = torch.randn(batch, length, d_state, generator=g, dtype=dtype)
    C = torch.randn(batch, length, d_state, generator=g, dtype=dtype)
    D = torch.randn(dim, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, delta, A, B, C, D)]


def assert_rel_close(actual, expected, rtol=1e-5, what=""):
    """Max abs error within rtol of the largest reference magnitude (exactly equal if that is 0)."""
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rtol * scale, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


def forward_and_grads(fn, inputs, seed=1):
    y = fn(*inputs)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    return y, torch.autograd.grad(y, inputs, gy)


NAMES = ("x", "delta", "A", "B", "C", "D")


@pytest.mark.parametrize("shape", [
    (2, 37, 5, 4),    # length not a multiple of the chunk
    (3, 32, 6, 16),   # exactly two chunks, d_state 16
    (2, 1, 4, 3),     # length 1
    (3, 21, 5, 1),    # d_state 1
])
def test_matches_reference_forward_and_gradients(shape):
    inputs = make_inputs(*shape)
    y, grads = forward_and_grads(selective_scan, inputs)
    y_ref, grads_ref = forward_and_grads(selective_scan_reference, inputs)
    assert y.dtype == torch.float32 and y.shape == shape[:3]
    assert_rel_close(y, y_ref, what="y")
    for name, g, g_ref in zip(NAMES, grads, grads_ref):
        assert g.shape == g_ref.shape
        assert_rel_close(g, g_ref, what=f"d{name}")


def test_sub_batches_and_short_chunks_match_reference(monkeypatch):
    """Many sub-batches and chunks (state and adjoint carried across both) change nothing."""
    monkeypatch.setattr(scan, "CHUNK", 3)
    monkeypatch.setattr(scan, "WORKSET", 1)  # one sequence per sub-batch
    inputs = make_inputs(4, 17, 3, 5, seed=3)
    y, grads = forward_and_grads(selective_scan, inputs)
    y_ref, grads_ref = forward_and_grads(selective_scan_reference, inputs)
    assert_rel_close(y, y_ref, what="y")
    for name, g, g_ref in zip(NAMES, grads, grads_ref):
        assert_rel_close(g, g_ref, what=f"d{name}")


def test_threaded_sub_batches_match_single_thread(monkeypatch):
    monkeypatch.setattr(scan, "WORKSET", 1)  # one sequence per sub-batch, split over threads
    inputs = make_inputs(5, 20, 4, 3, seed=9)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = forward_and_grads(selective_scan, inputs)
        torch.set_num_threads(2)
        multi = forward_and_grads(selective_scan, inputs)
        assert torch.get_num_threads() == 2  # restored after the scan
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single[0], multi[0])
    for name, a, b in zip(NAMES, single[1], multi[1]):
        assert_rel_close(b, a, rtol=1e-6, what=f"d{name}")


def test_dispatch_modes_see_every_op(monkeypatch):
    """Per-thread dispatch modes (the FLOP counter) still see the ops of every sub-batch."""
    from torch.utils.flop_counter import FlopCounterMode

    monkeypatch.setattr(scan, "WORKSET", 1)
    inputs = [t.detach() for t in make_inputs(4, 20, 8, 4)]
    counts = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with FlopCounterMode(display=False) as counter:
                selective_scan(*inputs)
            counts.append(counter.get_total_flops())
    finally:
        torch.set_num_threads(threads)
    assert counts[0] == counts[1] > 0


def test_gradcheck_float64(monkeypatch):
    monkeypatch.setattr(scan, "CHUNK", 4)
    monkeypatch.setattr(scan, "WORKSET", 4 * 3 * 2)  # one sequence per sub-batch
    inputs = make_inputs(2, 10, 3, 2, dtype=torch.float64, seed=4)
    assert torch.autograd.gradcheck(ChunkedScan.apply, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_float32_under_bf16_autocast():
    inputs = make_inputs(2, 19, 4, 3, seed=5)
    low = [t.detach().bfloat16() for t in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = selective_scan(*low)
    assert y.dtype == torch.float32
    expected = selective_scan_reference(*(t.float() for t in low))
    assert_rel_close(y, expected, what="y under autocast")


def test_no_clamping_of_large_states():
    """Large inputs pass through unclamped (the old code clipped h to ±100 and y to ±50)."""
    inputs = [t.detach() for t in make_inputs(1, 40, 2, 2, seed=6)]
    inputs[0] = inputs[0] * 1e4
    y = selective_scan(*inputs)
    expected = selective_scan_reference(*inputs)
    assert expected.abs().max() > 1e3
    assert_rel_close(y, expected, what="y")


def test_saves_only_inputs_and_chunk_boundary_states():
    batch, length, dim, d_state = 3, 64, 8, 16
    inputs = make_inputs(batch, length, dim, d_state)
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan(*inputs)
    boundary = (math.ceil(length / scan.CHUNK), batch, dim, d_state)
    assert sorted(saved) == sorted([tuple(t.shape) for t in inputs] + [boundary])
    assert max(math.prod(s) for s in saved) < batch * length * dim * d_state


def test_sub_batch_buffers_stay_within_workset():
    parts = scan._sub_batches(186, 16, 128 * 16)
    assert [p.start for p in parts] == list(range(0, 186, parts[0].stop))
    assert parts[-1].stop == 186
    assert (parts[0].stop - parts[0].start) * 16 * 128 * 16 <= scan.WORKSET


def _kernel_layout_scan(u, delta, A, B, C, D):
    """A stand-in for mamba_ssm's selective_scan_fn in its own layout (B,D,L) / (B,N,L)."""
    batch, dim, length = u.shape
    assert delta.shape == u.shape and B.shape == C.shape == (batch, A.shape[1], length)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta * u)[:, :, t, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, dim=-1)


def test_cuda_wrapper_layout_on_cpu(monkeypatch):
    """The mamba_ssm wrapper transposes to the kernel's layout and back (checked with a
    stand-in)."""
    monkeypatch.setattr(scan, "_mamba_ssm_scan", lambda: _kernel_layout_scan)
    inputs = make_inputs(2, 9, 3, 4, seed=7)
    y, grads = forward_and_grads(scan._cuda_scan, inputs)
    y_ref, grads_ref = forward_and_grads(selective_scan_reference, inputs)
    assert_rel_close(y, y_ref, what="y")
    for name, g, g_ref in zip(NAMES, grads, grads_ref):
        assert_rel_close(g, g_ref, what=f"d{name}")


@pytest.mark.skipif(not torch.cuda.is_available() or scan._mamba_ssm_scan() is None,
                    reason="needs CUDA and an importable mamba_ssm (pip install mbsnet[cuda])")
def test_mamba_ssm_kernel_matches_pytorch_scan():
    inputs = [t.detach().cuda().requires_grad_() for t in make_inputs(3, 70, 16, 16, seed=8)]
    y, grads = forward_and_grads(selective_scan, inputs)  # the fused kernel
    y_ref, grads_ref = forward_and_grads(ChunkedScan.apply, inputs)
    assert_rel_close(y, y_ref, rtol=1e-4, what="y")
    for name, g, g_ref in zip(NAMES, grads, grads_ref):
        assert_rel_close(g, g_ref, rtol=1e-4, what=f"d{name}")


def test_benchmark_quick_smoke(tmp_path):
    out = tmp_path / "scan.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scan.py"), "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    has_mambapy = importlib.util.find_spec("mambapy") is not None
    impls = {"mbsnet", "upstream_loop"} | ({"mambapy"} if has_mambapy else set())
    assert {r["implementation"] for r in rows} == impls
    assert {r["mode"] for r in rows} == {"fwd", "fwd_bwd"}
    assert {r["threads"] for r in rows} == {1, 2}
    assert len({r["shape"] for r in rows}) == 2
    assert len(rows) == len(impls) * 2 * 2 * 2
    for r in rows:
        assert set(r) == {"implementation", "shape", "threads", "mode", "median_ms", "peak_mb"}
        assert r["median_ms"] > 0 and r["peak_mb"] >= 0
    assert "mbsnet" in proc.stdout and "median_ms" in proc.stdout
