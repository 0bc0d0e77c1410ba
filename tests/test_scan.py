"""The selective scan: both modes of the native and both PyTorch implementations against the
sequential reference (values and gradients), the choice of implementation, dtype, memory and
op counts."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import types
import warnings

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from mbsnet.models import scan
from mbsnet.models.scan import (
    ChunkedScan,
    NativeScan,
    ParallelScan,
    scan_implementation,
    selective_scan,
    selective_scan_reference,
)
from mbsnet.models.scan import chunked as scan_chunked
from mbsnet.models.scan import modes as scan_modes
from mbsnet.models.scan import parallel as scan_parallel

from .helpers import ROOT

NAMES = ("x", "delta", "A", "B", "C", "D")
FUNCTIONS = {"native": NativeScan, "chunked": ChunkedScan, "parallel": ParallelScan}
ALL = list(FUNCTIONS)


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


def make_clamped_inputs(batch, length, dim, d_state, dtype=torch.float32, seed=0):
    """Inputs that make every as_coded clamp change some values: Δ from 1e-4 to 12 (Δ·A
    below -10 and above -0.001, Δ above 1), |B| up to about 30, |x| up to about 60."""
    x, _, A, B, C, D = (t.detach() for t in make_inputs(batch, length, dim, d_state, dtype, seed))
    g = torch.Generator().manual_seed(seed + 1)
    delta = torch.exp(torch.empty(batch, length, dim, dtype=dtype).uniform_(-9, 2.5, generator=g))
    return [t.requires_grad_() for t in (x * 15, delta, A, B * 8, C, D)]


def clamp_counts(x, delta, A, B, C):
    """How many values each as_coded clamp changes, stepping through the original's formulas."""
    counts = dict.fromkeys(("exponent", "decay", "delta", "input", "state", "output"), 0)
    x, delta, A, B, C = (t.detach() for t in (x, delta, A, B, C))
    h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
    for t in range(x.shape[1]):
        dt, xt, Bt, Ct = delta[:, t, :, None], x[:, t, :, None], B[:, t, None, :], C[:, t, None, :]
        z = dt * A
        e = torch.exp(z.clamp(-10, 0))
        p = dt.clamp(0, 1)
        b = p * Bt
        pre = e.clamp(0, 0.999) * h + b.clamp(-10, 10) * xt
        h = pre.clamp(-100, 100)
        y = (h * Ct).sum(-1) + x.shape[-1] * x[:, t]
        for name, value, clamped in (("exponent", z, z.clamp(-10, 0)),
                                     ("decay", e, e.clamp(0, 0.999)), ("delta", dt, p),
                                     ("input", b, b.clamp(-10, 10)), ("state", pre, h),
                                     ("output", y, y.clamp(-50, 50))):
            counts[name] += int((value != clamped).sum())
    return counts


def assert_rel_close(actual, expected, rtol=1e-5, what=""):
    """Max abs error within rtol of the largest reference magnitude (exactly equal if that is 0)."""
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rtol * scale, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


def forward_and_grads(fn, inputs, seed=1):
    """fn(*inputs) and the gradients of a random projection of it (None where unused)."""
    y = fn(*inputs)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    return y, torch.autograd.grad(y, inputs, gy, allow_unused=True)


def assert_matches_reference(fn, inputs, mode, rtol=1e-5):
    y, grads = forward_and_grads(fn, inputs)
    y_ref, grads_ref = forward_and_grads(lambda *t: selective_scan_reference(*t, mode=mode), inputs)
    assert y.dtype == torch.float32
    assert y.shape == inputs[0].shape
    assert_rel_close(y, y_ref, rtol, what="y")
    for name, g, g_ref in zip(NAMES, grads, grads_ref, strict=True):
        if mode == "as_coded" and name == "D":
            assert g is None
            assert g_ref is None
            continue
        assert g.shape == g_ref.shape
        assert_rel_close(g, g_ref, rtol, what=f"d{name}")


def scan_fn(impl, mode):
    return lambda *inputs: FUNCTIONS[impl].apply(*inputs, mode)


@pytest.fixture
def fresh_probe():
    """mamba_ssm_probe and the fallback warning forget what they saw, before and after."""
    scan.mamba_ssm_probe.cache_clear()
    scan._warn_fallback.cache_clear()
    yield
    scan.mamba_ssm_probe.cache_clear()
    scan._warn_fallback.cache_clear()


# --- exactness of both implementations, both modes ------------------------------------------

@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("mode", ["exact", "as_coded"])
@pytest.mark.parametrize("shape", [
    (2, 37, 5, 4),    # length not a multiple of the chunk (nor a power of two)
    (3, 32, 6, 16),   # exactly two chunks, d_state 16
    (2, 1, 4, 3),     # length 1
    (3, 21, 5, 1),    # d_state 1
])
def test_matches_reference_forward_and_gradients(impl, mode, shape):
    assert_matches_reference(scan_fn(impl, mode), make_inputs(*shape), mode)


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("mode", ["exact", "as_coded"])
def test_non_contiguous_inputs(impl, mode):
    """As the Mamba block passes them: x a transposed conv output, B and C slices of x_proj."""
    inputs = [t.detach().transpose(1, 2).contiguous().transpose(1, 2) if t.dim() == 3 else
              t.detach() for t in make_clamped_inputs(3, 33, 5, 4, seed=3)]
    assert not inputs[0].is_contiguous()
    assert_matches_reference(scan_fn(impl, mode), [t.requires_grad_() for t in inputs], mode)


@pytest.mark.parametrize("impl", ALL)
def test_as_coded_matches_reference_with_every_clamp_active(impl):
    inputs = make_clamped_inputs(3, 40, 6, 5, seed=11)
    counts = clamp_counts(*inputs[:5])
    assert all(counts.values()), counts
    assert_matches_reference(scan_fn(impl, "as_coded"), inputs, "as_coded")


@pytest.mark.parametrize("impl", ALL)
def test_as_coded_at_mamba_initialisation(impl):
    """Δ in Mamba's initial range (down to below 1e-3) and A = -(1..N): of the input clamps
    only the decay's 0.999 holds, the others are skipped (and must be)."""
    x, _, _, B, C, D = (t.detach() for t in make_inputs(3, 40, 6, 16, seed=18))
    delta = torch.empty(3, 40, 6).uniform_(5e-4, 0.1, generator=torch.Generator().manual_seed(2))
    A = -torch.arange(1.0, 17.0).repeat(6, 1)
    inputs = [t.requires_grad_() for t in (x, delta, A, B, C, D)]
    counts = clamp_counts(*inputs[:5])
    assert counts["decay"] > 0, counts
    assert counts["exponent"] == counts["delta"] == counts["input"] == counts["state"] == 0
    assert scan_modes.binding_clamps(delta, A, B, "as_coded") == (False, True, False, False)
    assert_matches_reference(scan_fn(impl, "as_coded"), inputs, "as_coded")


@pytest.mark.parametrize("impl", ["native", "chunked"])
def test_as_coded_state_clamp_in_a_single_chunk_of_many(impl):
    """The state clamp holds in a few steps only (chunked: in one chunk, which takes the
    clamped recurrence and masks the adjoint, the others the unclamped one)."""
    inputs = [t.detach() for t in make_inputs(2, 48, 4, 3, seed=12)]
    inputs[0][:, 20:23] *= 400  # states beyond ±100 from step 20, decaying later
    inputs = [t.requires_grad_() for t in inputs]
    assert clamp_counts(*inputs[:5])["state"] > 0
    assert_matches_reference(scan_fn(impl, "as_coded"), inputs, "as_coded")


@pytest.mark.parametrize("impl", ALL)
def test_as_coded_ignores_D(impl):
    inputs = [t.detach() for t in make_inputs(2, 19, 4, 3, seed=13)]
    y = FUNCTIONS[impl].apply(*inputs, "as_coded")
    inputs[5] = inputs[5] * 7 + 3
    assert torch.equal(FUNCTIONS[impl].apply(*inputs, "as_coded"), y)
    D = inputs[5].requires_grad_()
    FUNCTIONS[impl].apply(*inputs[:5], D, "as_coded").sum().backward()
    assert D.grad is None


def test_as_coded_skip_gain_is_dim():
    """With C = 0 the output is clamp(dim·x, ±50), whatever D."""
    inputs = [t.detach() for t in make_inputs(2, 9, 6, 3, seed=14)]
    inputs[4] = torch.zeros_like(inputs[4])
    y = selective_scan(*inputs, mode="as_coded")
    assert torch.equal(y, (6 * inputs[0]).clamp(-50, 50))


def test_sub_batches_and_short_chunks_match_reference(monkeypatch):
    """Many sub-batches and chunks (state and adjoint carried across both) change nothing."""
    monkeypatch.setattr(scan_chunked, "CHUNK", 3)
    monkeypatch.setattr(scan_chunked, "WORKSET", 1)  # one sequence per sub-batch
    for mode, inputs in (("exact", make_inputs(4, 17, 3, 5, seed=3)),
                         ("as_coded", make_clamped_inputs(4, 17, 3, 5, seed=3))):
        assert_matches_reference(scan_fn("chunked", mode), inputs, mode)


def test_parallel_parts_match_reference(monkeypatch):
    monkeypatch.setattr(scan_parallel, "WORKSET", 2 * 23 * 3 * 4)  # parts of 2 sequences
    assert scan_parallel._parts(5, 23 * 3 * 4) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    for mode in ("exact", "as_coded"):
        assert_matches_reference(scan_fn("parallel", mode), make_inputs(5, 23, 3, 4, seed=5),
                                 mode)


def test_parallel_parts_are_few_and_within_workset():
    per_sequence = 251 * 128 * 16
    parts = scan_parallel._parts(186, per_sequence)
    assert len(parts) == math.ceil(186 * per_sequence / scan_parallel.WORKSET) == 2
    assert max(p.stop - p.start for p in parts) * per_sequence <= scan_parallel.WORKSET
    assert parts[0].start == 0
    assert parts[-1].stop == 186


def test_parallel_as_coded_uses_the_prefix_scan_unless_a_state_leaves_100(monkeypatch):
    """Unclamped states within ±100: the parallel result is the clamped one. Beyond: the
    call runs the sequential scan instead; both match the reference."""
    calls = []
    sequential = scan_chunked.chunked_forward

    def spy(*args):
        calls.append(args[-2])
        return sequential(*args)

    monkeypatch.setattr(scan_chunked, "chunked_forward", spy)
    small = make_inputs(2, 30, 4, 3, seed=15)
    assert clamp_counts(*small[:5])["state"] == 0
    assert_matches_reference(scan_fn("parallel", "as_coded"), small, "as_coded")
    assert calls == []
    large = make_clamped_inputs(2, 30, 4, 3, seed=15)
    assert clamp_counts(*large[:5])["state"] > 0
    assert_matches_reference(scan_fn("parallel", "as_coded"), large, "as_coded")
    assert calls == ["as_coded"]


@pytest.mark.parametrize("impl", ALL)
def test_as_coded_survives_gradient_checkpointing(monkeypatch, impl):
    monkeypatch.setenv("MBSNET_SCAN", impl)
    inputs = make_clamped_inputs(2, 25, 4, 3, seed=16)

    def block(*t):
        return selective_scan(*t, mode="as_coded").tanh()

    y, grads = forward_and_grads(block, inputs)
    y_ckpt, grads_ckpt = forward_and_grads(lambda *t: checkpoint(block, *t, use_reentrant=False),
                                           inputs)
    assert torch.equal(y, y_ckpt)
    for name, g, g_ckpt in zip(NAMES[:5], grads[:5], grads_ckpt[:5], strict=True):
        assert torch.equal(g, g_ckpt), name
    assert grads[5] is None
    assert grads_ckpt[5] is None


def test_threaded_sub_batches_match_single_thread(monkeypatch):
    monkeypatch.setattr(scan_chunked, "WORKSET", 1)  # a sequence per sub-batch, over threads
    threads = torch.get_num_threads()
    for mode, inputs in (("exact", make_inputs(5, 20, 4, 3, seed=9)),
                         ("as_coded", make_clamped_inputs(5, 20, 4, 3, seed=9))):
        try:
            torch.set_num_threads(1)
            single = forward_and_grads(scan_fn("chunked", mode), inputs)
            torch.set_num_threads(2)
            multi = forward_and_grads(scan_fn("chunked", mode), inputs)
            assert torch.get_num_threads() == 2  # restored after the scan
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(single[0], multi[0])
        for name, a, b in zip(NAMES, single[1], multi[1], strict=True):
            if a is not None:
                assert_rel_close(b, a, rtol=1e-6, what=f"{mode} d{name}")


def test_dispatch_modes_see_every_op(monkeypatch):
    """Per-thread dispatch modes (the FLOP counter) still see the ops of every sub-batch."""
    from torch.utils.flop_counter import FlopCounterMode

    monkeypatch.setattr(scan_chunked, "WORKSET", 1)
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


@pytest.mark.parametrize("impl", ["chunked", "parallel"])  # float64: never native
def test_gradcheck_float64(monkeypatch, impl):
    monkeypatch.setattr(scan_chunked, "CHUNK", 4)
    monkeypatch.setattr(scan_chunked, "WORKSET", 4 * 3 * 2)  # one sequence per sub-batch
    monkeypatch.setattr(scan_parallel, "WORKSET", 10 * 3 * 2)  # one sequence per part
    inputs = make_inputs(2, 10, 3, 2, dtype=torch.float64, seed=4)
    assert torch.autograd.gradcheck(scan_fn(impl, "exact"), inputs, eps=1e-6, atol=1e-7,
                                    rtol=1e-5)


@pytest.mark.parametrize("impl", ["chunked", "parallel"])  # float64: never native
def test_gradcheck_float64_as_coded(monkeypatch, impl):
    """Away from the clamps' edges (none within 1e-3 of its bound), with all but the Δ·A
    clamp holding somewhere: the gradient is exact there, zero where a clamp holds."""
    monkeypatch.setattr(scan_chunked, "CHUNK", 4)
    inputs = [t.detach() for t in make_clamped_inputs(2, 10, 3, 2, dtype=torch.float64, seed=17)]
    inputs[1] = inputs[1].clamp(max=3.0)  # keep Δ·A off -10
    counts = clamp_counts(*inputs[:5])
    assert all(counts[clamp] for clamp in ("state", "output", "input", "delta")), counts
    inputs = [t.requires_grad_() for t in inputs[:5]] + [inputs[5]]
    assert torch.autograd.gradcheck(scan_fn(impl, "as_coded"), inputs, eps=1e-7, atol=1e-6,
                                    rtol=1e-5)


def test_float32_under_bf16_autocast():
    inputs = make_inputs(2, 19, 4, 3, seed=5)
    low = [t.detach().bfloat16() for t in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = selective_scan(*low)
    assert y.dtype == torch.float32
    expected = selective_scan_reference(*(t.float() for t in low))
    assert_rel_close(y, expected, what="y under autocast")


def test_exact_mode_does_not_clamp_large_states():
    """Large inputs pass through unclamped in exact mode (as coded clips h to ±100, y to ±50)."""
    inputs = [t.detach() for t in make_inputs(1, 40, 2, 2, seed=6)]
    inputs[0] = inputs[0] * 1e4
    y = selective_scan(*inputs)
    expected = selective_scan_reference(*inputs)
    assert expected.abs().max() > 1e3
    assert_rel_close(y, expected, what="y")


@pytest.mark.parametrize("mode", ["exact", "as_coded"])
def test_chunked_saves_only_inputs_and_chunk_boundary_states(mode):
    batch, length, dim, d_state = 3, 64, 8, 16
    inputs = make_inputs(batch, length, dim, d_state)
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ChunkedScan.apply(*inputs, mode)
    boundary = ((math.ceil(length / scan_chunked.CHUNK), batch, dim, d_state), torch.float32)
    expected = [(tuple(t.shape), t.dtype) for t in inputs] + [boundary]
    if mode == "as_coded":
        expected.append(((batch, length, dim), torch.bool))  # where the output clamp held
    assert sorted(saved, key=str) == sorted(expected, key=str)


@pytest.mark.parametrize("mode", ["exact", "as_coded"])
def test_parallel_saves_only_inputs(mode):
    inputs = make_inputs(3, 40, 8, 16)
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ParallelScan.apply(*inputs, mode)
    expected = [(tuple(t.shape), t.dtype) for t in inputs]
    if mode == "as_coded":
        expected.append(((3, 40, 8), torch.bool))
    assert sorted(saved, key=str) == sorted(expected, key=str)


def test_sub_batch_buffers_stay_within_workset():
    parts = scan_chunked._sub_batches(186, 16, 128 * 16)
    assert [p.start for p in parts] == list(range(0, 186, parts[0].stop))
    assert parts[-1].stop == 186
    assert (parts[0].stop - parts[0].start) * 16 * 128 * 16 <= scan_chunked.WORKSET


@pytest.mark.parametrize("call", [
    lambda t: selective_scan(*t, mode="foo"),
    lambda t: selective_scan_reference(*t, mode="foo"),
    lambda t: ChunkedScan.apply(*t, "foo"),
    lambda t: NativeScan.apply(*t, "foo"),
    lambda t: ParallelScan.apply(*t, "foo"),
    lambda t: scan_implementation(torch.device("cpu"), "foo"),
])
def test_unknown_mode_is_refused(call):
    with pytest.raises(ValueError, match="scan mode must be one of exact, as_coded; got 'foo'"):
        call([t.detach() for t in make_inputs(1, 3, 2, 2)])


# --- which implementation runs ----------------------------------------------------------------

def _kernel_layout_scan(u, delta, A, B, C, D):
    """A stand-in for mamba_ssm's selective_scan_fn in its own layout (B,D,L) / (B,N,L)."""
    batch, dim, length = u.shape
    assert delta.shape == u.shape
    assert B.shape == C.shape == (batch, A.shape[1], length)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta * u)[:, :, t, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, dim=-1)


def fake_mamba_ssm(monkeypatch, kernel: bool) -> None:
    """Put a mamba_ssm package in sys.modules, with or without its compiled extension."""
    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_fn = _kernel_layout_scan
    for name, module in (("mamba_ssm", types.ModuleType("mamba_ssm")),
                         ("mamba_ssm.ops", types.ModuleType("mamba_ssm.ops")),
                         ("mamba_ssm.ops.selective_scan_interface", interface)):
        monkeypatch.setitem(sys.modules, name, module)
    extension = types.ModuleType("selective_scan_cuda") if kernel else None  # None: not found
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", extension)


def test_probe_without_mamba_ssm(monkeypatch, fresh_probe):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)
    fn, reason = scan.mamba_ssm_probe()
    prefix = "mamba_ssm not installed: "  # then the ModuleNotFoundError's message
    assert fn is None
    assert reason.startswith(prefix)
    assert "mamba_ssm" in reason[len(prefix):]


def test_probe_without_the_compiled_kernel(monkeypatch, fresh_probe):
    fake_mamba_ssm(monkeypatch, kernel=False)
    fn, reason = scan.mamba_ssm_probe()
    assert fn is None
    assert reason.startswith("selective_scan_cuda missing: ModuleNotFoundError")


def test_probe_with_the_compiled_kernel(monkeypatch, fresh_probe):
    fake_mamba_ssm(monkeypatch, kernel=True)
    assert scan.mamba_ssm_probe()[0] is _kernel_layout_scan


def test_implementation_on_the_cpu(monkeypatch, fresh_probe):
    fake_mamba_ssm(monkeypatch, kernel=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scan_implementation(torch.device("cpu"), "exact") == "native"
        assert scan_implementation(torch.device("cpu"), "as_coded") == "native"


def test_implementation_on_the_cpu_without_a_compiler(monkeypatch, fresh_probe):
    """The native scan cannot be built: the chunked scan runs, with one warning saying why."""
    monkeypatch.setattr(scan, "native_library", lambda: (None, "no C++ compiler: set CXX"))
    with pytest.warns(RuntimeWarning, match=r"chunked scan \(the native scan cannot be built: "
                                            r"no C\+\+ compiler: set CXX\)"):
        assert scan_implementation(torch.device("cpu"), "exact") == "chunked"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scan_implementation(torch.device("cpu"), "as_coded") == "chunked"
    monkeypatch.setenv("MBSNET_SCAN", "native")
    with pytest.raises(RuntimeError, match="MBSNET_SCAN=native, but the native scan cannot "
                                           "run: no C\\+\\+ compiler"):
        scan_implementation(torch.device("cpu"))


def test_implementation_on_cuda_with_the_kernel(monkeypatch, fresh_probe):
    fake_mamba_ssm(monkeypatch, kernel=True)
    cuda = torch.device("cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scan_implementation(cuda, "exact") == "mamba_ssm"
    with pytest.warns(RuntimeWarning, match=r"parallel scan.*as_coded clamps need the fallback"):
        assert scan_implementation(cuda, "as_coded") == "parallel"


def test_implementation_on_cuda_without_the_kernel_warns_once(monkeypatch, fresh_probe):
    fake_mamba_ssm(monkeypatch, kernel=False)
    cuda = torch.device("cuda")
    with pytest.warns(RuntimeWarning, match="selective_scan_cuda missing: ModuleNotFoundError"):
        assert scan_implementation(cuda, "exact") == "parallel"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scan_implementation(cuda, "exact") == "parallel"


@pytest.mark.parametrize("forced", ["parallel", "native", "chunked"])
def test_forcing_a_pytorch_scan(monkeypatch, fresh_probe, forced):
    fake_mamba_ssm(monkeypatch, kernel=True)
    monkeypatch.setenv("MBSNET_SCAN", forced)
    for device in ("cpu", "cuda"):
        for mode in ("exact", "as_coded"):
            assert scan_implementation(torch.device(device), mode) == forced
    used = []
    monkeypatch.setitem(scan.FUNCTIONS, forced, types.SimpleNamespace(
        apply=lambda *args: used.append(args[-1]) or args[0]))
    selective_scan(*(t.detach() for t in make_inputs(1, 3, 2, 2)), mode="as_coded")
    assert used == ["as_coded"]


def test_forcing_mamba_ssm(monkeypatch, fresh_probe):
    monkeypatch.setenv("MBSNET_SCAN", "mamba_ssm")
    fake_mamba_ssm(monkeypatch, kernel=False)
    cuda = torch.device("cuda")
    with pytest.raises(RuntimeError, match="MBSNET_SCAN=mamba_ssm, but mamba_ssm cannot run: "
                                           "selective_scan_cuda missing"):
        scan_implementation(cuda, "exact")
    scan.mamba_ssm_probe.cache_clear()
    fake_mamba_ssm(monkeypatch, kernel=True)
    assert scan_implementation(cuda, "exact") == "mamba_ssm"
    with pytest.raises(RuntimeError, match="cannot run mode 'as_coded'"):
        scan_implementation(cuda, "as_coded")
    with pytest.raises(RuntimeError, match="needs CUDA tensors, got device cpu"):
        scan_implementation(torch.device("cpu"), "exact")


@pytest.mark.parametrize("value", ["", "auto"])
def test_auto_is_the_default(monkeypatch, fresh_probe, value):
    monkeypatch.setenv("MBSNET_SCAN", value)
    assert scan_implementation(torch.device("cpu")) == "native"


def test_bad_forced_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("MBSNET_SCAN", "fast")
    with pytest.raises(ValueError, match="MBSNET_SCAN must be one of auto, mamba_ssm, parallel, "
                                         "native, chunked; got 'fast'"):
        selective_scan(*(t.detach() for t in make_inputs(1, 3, 2, 2)))


def test_cuda_wrapper_layout_on_cpu(monkeypatch):
    """The mamba_ssm wrapper transposes to the kernel's layout and back (checked with a
    stand-in)."""
    monkeypatch.setattr(scan, "mamba_ssm_probe", lambda: (_kernel_layout_scan, "stand-in"))
    assert_matches_reference(scan._cuda_scan, make_inputs(2, 9, 3, 4, seed=7), "exact")


# --- ATen operations per call (what a GPU launches) ------------------------------------------

def load_benchmark():
    spec = importlib.util.spec_from_file_location("scan_benchmark", ROOT / "benchmarks" / "scan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parallel_scan_needs_a_twentieth_of_the_chunked_ops():
    """Counted on meta tensors at the intra-band layer's length, dim and d_state (a third of
    its batch, so the same chunk and sub-batch structure, and a quicker count)."""
    bench = load_benchmark()
    shape = (64, 251, 128, 16)
    chunked = bench.count_ops(bench.scan_function("chunked:exact"), shape)
    parallel = bench.count_ops(bench.scan_function("parallel:exact"), shape)
    assert min(chunked) > 0
    assert min(parallel) > 0
    assert sum(parallel) * 20 <= sum(chunked), (chunked, parallel)


# --- CUDA -------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.parametrize("mode", ["exact", "as_coded"])
def test_parallel_scan_on_cuda_matches_reference(mode):
    inputs = make_inputs(3, 70, 16, 16, seed=8) if mode == "exact" else \
        make_clamped_inputs(3, 70, 16, 16, seed=8)
    reference = forward_and_grads(lambda *t: selective_scan_reference(*t, mode=mode), inputs)
    cuda = [t.detach().cuda().requires_grad_() for t in inputs]
    y, grads = forward_and_grads(scan_fn("parallel", mode), cuda)
    assert_rel_close(y.cpu(), reference[0], what="y")
    for name, g, g_ref in zip(NAMES, grads, reference[1], strict=True):
        if g_ref is not None:
            assert_rel_close(g.cpu(), g_ref, rtol=1e-4, what=f"d{name}")


@pytest.mark.skipif(not torch.cuda.is_available() or scan.mamba_ssm_probe()[0] is None,
                    reason="needs CUDA and mamba_ssm with its selective_scan_cuda kernel "
                           "(README: Installing the fused kernel)")
def test_mamba_ssm_kernel_matches_pytorch_scan():
    inputs = [t.detach().cuda().requires_grad_() for t in make_inputs(3, 70, 16, 16, seed=8)]
    y, grads = forward_and_grads(selective_scan, inputs)  # the fused kernel
    y_ref, grads_ref = forward_and_grads(scan_fn("parallel", "exact"), inputs)
    assert_rel_close(y, y_ref, rtol=1e-4, what="y")
    for name, g, g_ref in zip(NAMES, grads, grads_ref, strict=True):
        assert_rel_close(g, g_ref, rtol=1e-4, what=f"d{name}")


# --- the benchmark ----------------------------------------------------------------------------

def test_benchmark_quick_smoke(tmp_path):
    out = tmp_path / "scan.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scan.py"), "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    has_mambapy = importlib.util.find_spec("mambapy") is not None
    impls = {"mbsnet", "chunked", "upstream_loop"} | ({"mambapy"} if has_mambapy else set())
    assert {r["implementation"] for r in rows} == impls
    assert {r["mode"] for r in rows} == {"fwd", "fwd_bwd"}
    assert {r["threads"] for r in rows} == {1, 2}
    assert len({r["shape"] for r in rows}) == 2
    assert len(rows) == len(impls) * 2 * 2 * 2
    for r in rows:
        assert set(r) == {"implementation", "shape", "threads", "mode", "median_ms", "peak_mb"}
        assert r["median_ms"] > 0
        assert r["peak_mb"] >= 0
    assert "mbsnet" in proc.stdout
    assert "median_ms" in proc.stdout


def test_benchmark_count_ops_quick_smoke(tmp_path):
    out = tmp_path / "ops.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scan.py"), "--count-ops",
                           "--quick", "--json", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert [(r["implementation"], r["scan_mode"]) for r in rows[:4]] == [
        ("chunked", "exact"), ("chunked", "as_coded"), ("parallel", "exact"),
        ("parallel", "as_coded")]
    assert len(rows) == 8
    assert len({r["shape"] for r in rows}) == 2
    for r in rows:
        assert r["ops_fwd"] > 0
        assert r["ops_bwd"] > 0
        assert r["cpu_fwd_bwd_ms"] > 0
        assert r["cpu_shape"] == r["shape"]
        assert r["cpu_peak_mb"] >= 0
    assert "ops vs chunked" in proc.stdout
