"""The native scan: its build (cache, atomic rename, errors), and what only it can get wrong:
vector tails, long sequences, NaN, threads, and the calls it hands to the chunked scan.
Its values and gradients against the reference are in test_scan.py with the others."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mbsnet.models.scan import NativeScan, native, selective_scan_reference
from mbsnet.models.scan import chunked as scan_chunked

from .test_scan import (
    assert_matches_reference,
    assert_rel_close,
    forward_and_grads,
    make_inputs,
    scan_fn,
)

pytestmark = pytest.mark.skipif(native.library()[0] is None,
                                reason=f"the native scan cannot be built: {native.library()[1]}")


# --- values ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["exact", "as_coded"])
@pytest.mark.parametrize("dim", [1, 8, 13, 24, 131])  # below, at and across the vector width
def test_every_channel_count(mode, dim):
    assert_matches_reference(scan_fn("native", mode), make_inputs(2, 9, dim, 3, seed=dim), mode)


def test_long_sequence_and_wide_state():
    """A whole utterance at the intra-band layer's width (evaluation runs such calls)."""
    inputs = make_inputs(1, 600, 16, 16, seed=21)
    assert_matches_reference(scan_fn("native", "exact"), inputs, "exact", rtol=2e-5)


def test_decay_over_the_whole_float_range():
    """Δ·A from -1e4 (decay underflows to 0) to -1e-6 (decay rounds to 1)."""
    x, _, _, B, C, D = (t.detach() for t in make_inputs(2, 30, 8, 4, seed=22))
    delta = torch.logspace(-6, 2, 2 * 30 * 8).view(2, 30, 8)
    A = -torch.logspace(0, 2, 8 * 4).view(8, 4)
    inputs = [t.requires_grad_() for t in (x, delta, A, B, C, D)]
    assert_matches_reference(scan_fn("native", "exact"), inputs, "exact")


@pytest.mark.parametrize("mode", ["exact", "as_coded"])
def test_nan_propagates(mode):
    """A non-finite input gives a non-finite output, as the training's bad-step guard needs."""
    inputs = [t.detach() for t in make_inputs(2, 12, 9, 3)]
    inputs[0][1, 4, 2] = float("nan")
    y = NativeScan.apply(*inputs, mode)
    assert torch.isnan(y[1, 4:, 2]).all()
    assert torch.isfinite(y[0]).all()


def test_threads_split_sequences_without_changing_values():
    threads = torch.get_num_threads()
    inputs = make_inputs(5, 20, 12, 3, seed=9)
    try:
        torch.set_num_threads(1)
        single = forward_and_grads(scan_fn("native", "exact"), inputs)
        torch.set_num_threads(2)
        multi = forward_and_grads(scan_fn("native", "exact"), inputs)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single[0], multi[0])
    for name, a, b in zip(("x", "delta", "A", "B", "C", "D"), single[1], multi[1], strict=True):
        if name == "A" or name == "D":  # summed over sequences: the order of the sum changes
            assert_rel_close(b, a, rtol=1e-6, what=name)
        else:  # per sequence: the same arithmetic
            assert torch.equal(a, b), name


def test_ranges_cover_every_sequence_once(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert native._ranges(7) == [(0, 2), (2, 4), (4, 7)]
    assert native._ranges(2) == [(0, 1), (1, 2)]


def test_saves_only_inputs():
    inputs = make_inputs(3, 40, 8, 16)
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        NativeScan.apply(*inputs, "exact")
    assert sorted(saved, key=str) == sorted(((tuple(t.shape), t.dtype) for t in inputs), key=str)


# --- calls it hands to the chunked scan ---------------------------------------------------------

def _chunked_calls(monkeypatch) -> list:
    calls = []
    real = scan_chunked.chunked_forward
    monkeypatch.setattr(scan_chunked, "chunked_forward",
                        lambda *args: calls.append(args[0].dtype) or real(*args))
    return calls


def test_float64_runs_the_chunked_scan(monkeypatch):
    calls = _chunked_calls(monkeypatch)
    inputs = make_inputs(2, 10, 3, 2, dtype=torch.float64, seed=4)
    y = NativeScan.apply(*inputs, "exact")
    assert y.dtype == torch.float64
    assert calls == [torch.float64]
    torch.testing.assert_close(y, selective_scan_reference(*inputs))


def test_dispatch_modes_run_the_chunked_scan(monkeypatch):
    """The FLOP counter must see the scan's ops, which compiled code would hide."""
    calls = _chunked_calls(monkeypatch)
    inputs = [t.detach() for t in make_inputs(2, 10, 8, 4)]
    with FlopCounterMode(display=False) as counter:
        NativeScan.apply(*inputs, "exact")
    assert calls == [torch.float32]
    assert counter.get_total_flops() > 0
    NativeScan.apply(*inputs, "exact")
    assert calls == [torch.float32]  # outside the mode: native again


# --- the build ----------------------------------------------------------------------------------

def test_library_path_depends_on_source_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv(native.CACHE_VAR, str(tmp_path))
    cxx = native.compiler()
    path = native.library_path(cxx)
    assert path.parent == tmp_path
    assert path.name.startswith("scan-")
    monkeypatch.setattr(native, "_cpu_identity", lambda: "another cpu")
    assert native.library_path(cxx) != path


def test_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv(native.CACHE_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert native.cache_dir() == tmp_path / "mbsnet"
    monkeypatch.setenv(native.CACHE_VAR, str(tmp_path / "here"))
    assert native.cache_dir() == tmp_path / "here"


def test_build_writes_a_loadable_library_and_nothing_else(tmp_path):
    target = tmp_path / "cache" / "scan-test.so"
    native.build(target, native.compiler())
    assert [p.name for p in target.parent.iterdir()] == ["scan-test.so"]
    assert subprocess.run(["nm", "-D", str(target)], capture_output=True, text=True,
                          check=True).stdout.count("mbsnet_scan_") == 3


def test_failed_build_names_the_command_and_leaves_nothing(tmp_path, monkeypatch):
    bad = tmp_path / "native.cpp"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCE", bad)
    target = tmp_path / "cache" / "scan-bad.so"
    with pytest.raises(native.BuildError, match=r"native\.cpp -o .* failed:\n.*error"):
        native.build(target, native.compiler())
    assert list(target.parent.iterdir()) == []


def test_missing_compiler_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    with pytest.raises(native.BuildError, match="no-such-g\\+\\+.* does not run"):
        native.library_path(native.compiler())
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(native.BuildError, match="no C\\+\\+ compiler: set CXX or install g\\+\\+"):
        native.compiler()


def test_a_fresh_process_builds_once_then_loads(tmp_path):
    """First use on a machine builds into the cache; a second process only loads it."""
    script = ("from mbsnet.models.scan import native;"
              "lib, why = native.library(); assert lib is not None, why;"
              "print(why)")
    env = {**os.environ, native.CACHE_VAR: str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                           check=True)
    (built,) = tmp_path.iterdir()
    stamp = built.stat().st_mtime_ns
    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            check=True)
    assert first.stdout == second.stdout
    assert str(built) in first.stdout
    assert built.stat().st_mtime_ns == stamp
