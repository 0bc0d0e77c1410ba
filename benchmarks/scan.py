"""Benchmark the selective scan: mbsnet's against the old loop and mambapy's parallel scan.

``mbsnet`` is the scan as the Mamba block calls it (on the CPU: the native scan, where it
builds), ``chunked`` its PyTorch fallback on the CPU.

    python benchmarks/scan.py [--json FILE] [--quick]
    python benchmarks/scan.py --count-ops [--json FILE] [--quick] [--cpu-shape BxLxDxN]

Times forward and forward+backward (median of several runs after a warm-up) and measures the
peak extra resident memory of each, for every implementation, shape, thread count and mode,
each in a fresh subprocess (--quick: one per implementation and thread count). Prints a
table; --json writes rows {implementation, shape, threads, mode: "fwd"|"fwd_bwd", median_ms,
peak_mb}.
"fwd" is the training forward (inputs require grad, so whatever backward needs is kept).

--count-ops compares mbsnet's two PyTorch scans, ``chunked`` and ``parallel``, in both scan
modes: the ATen operations of one forward and one backward, counted on meta tensors (so it
runs anywhere; on a GPU each is a dispatch, mostly a kernel launch), beside the
forward+backward time (median, 1 thread) and peak extra memory of the same scan on the CPU
at --cpu-shape (default: the same shape), each in a fresh subprocess (--quick: in this one).
Rows {implementation, path, scan_mode, shape, ops_fwd, ops_bwd, cpu_shape, cpu_fwd_bwd_ms,
cpu_peak_mb}.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SHAPES = {  # (batch, length, dim, d_state)
    "intra-band": (186, 251, 128, 16),
    "cross-band": (1506, 31, 128, 16),
}
QUICK_SHAPES = {"intra-band": (4, 37, 8, 4), "cross-band": (12, 7, 8, 4)}
THREADS = (1, 2)
MODES = ("fwd", "fwd_bwd")
# (warm-up runs, timed runs) per implementation, after a one-time warm-up on a tiny shape;
# the old loop takes ~30 s per full-size run, so it gets no second full-size warm-up
REPEATS = {"mbsnet": (1, 5), "chunked": (1, 5), "mambapy": (1, 3), "upstream_loop": (0, 2)}
QUICK_REPEATS = (1, 2)


# --- the implementations, all with mbsnet.models.scan's layout -----------------------------

def upstream_loop(x, delta, A, B, C, D, chunk=64):
    """The old algorithm: exp(Δ·A) materialised per 64-step chunk as [batch, chunk, D, N],
    a Python loop over the steps inside it, autograd through everything (clamps left out)."""
    h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
    ys = []
    for t0 in range(0, x.shape[1], chunk):
        d, xc, Bc, Cc = (t[:, t0:t0 + chunk] for t in (delta, x, B, C))
        decay = torch.exp(d[..., None] * A)                       # [batch, chunk, D, N]
        drive = (d * xc)[..., None] * Bc[:, :, None, :]           # [batch, chunk, D, N]
        for t in range(d.shape[1]):
            h = decay[:, t] * h + drive[:, t]
            ys.append((h * Cc[:, t, None, :]).sum(-1))
    return torch.stack(ys, dim=1) + x * D


def mambapy_scan(x, delta, A, B, C, D):
    """mambapy's parallel (Blelloch) scan over the full [batch, length, D, N] tensors."""
    from mambapy.pscan import pscan

    decay = torch.exp(delta[..., None] * A)
    drive = (delta * x)[..., None] * B[:, :, None, :]
    hs = pscan(decay, drive)
    return (hs @ C[..., None]).squeeze(-1) + x * D


def mbsnet_scan(x, delta, A, B, C, D):
    from mbsnet.models.scan import selective_scan

    return selective_scan(x, delta, A, B, C, D)


def chunked_scan(*inputs):
    return scan_function("chunked:exact")(*inputs)


IMPLEMENTATIONS = {"mbsnet": mbsnet_scan, "chunked": chunked_scan, "upstream_loop": upstream_loop,
                   "mambapy": mambapy_scan}

SCAN_PATHS = {"chunked": "CPU default", "parallel": "CUDA default without mamba_ssm"}


def scan_function(name: str):
    """``chunked:exact``, ``parallel:as_coded``, ...: that scan Function called in that mode."""
    from mbsnet.models.scan import FUNCTIONS

    impl, mode = name.split(":")
    return lambda *inputs: FUNCTIONS[impl].apply(*inputs, mode)


def implementation(name: str):
    return IMPLEMENTATIONS[name] if name in IMPLEMENTATIONS else scan_function(name)


# --- ATen operations per call ---------------------------------------------------------------

class OpCounter(TorchDispatchMode):
    """Counts every ATen operation dispatched while it is active (views included)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn, shape: tuple[int, int, int, int]) -> tuple[int, int]:
    """(forward, backward) ATen operations of fn(x, delta, A, B, C, D) on meta tensors."""
    batch, length, dim, n = shape
    sizes = [(batch, length, dim), (batch, length, dim), (dim, n), (batch, length, n),
             (batch, length, n), (dim,)]
    inputs = [torch.empty(size, device="meta", requires_grad=True) for size in sizes]
    with OpCounter() as forward:
        y = fn(*inputs)
    grad = torch.ones_like(y)
    with OpCounter() as backward:
        y.backward(grad)
    return forward.count, backward.count


# --- one measurement, in its own process ----------------------------------------------------

def _rss_mb(field: str) -> float:
    """VmRSS / VmHWM of this process in MB (ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> float:
    """Restart the peak-RSS counter (Linux); return the current RSS as the baseline."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _rss_mb("VmRSS")


def make_inputs(shape: tuple[int, int, int, int]) -> list:
    """Inputs as the Mamba block feeds them at initialisation, all requiring grad."""

    torch.manual_seed(0)
    batch, length, dim, n = shape
    x = torch.randn(batch, length, dim)
    delta = torch.rand(batch, length, dim).mul_(0.1).add_(1e-3)  # the dt_bias range
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(dim, 1)
    B, C = torch.randn(batch, length, n), torch.randn(batch, length, n)
    D = torch.ones(dim)
    return [t.requires_grad_() for t in (x, delta, A, B, C, D)]


def measure(impl: str, shape: tuple[int, int, int, int], threads: int, warmup: int, runs: int,
            modes: list[str]) -> list[dict]:
    """Time these modes of one implementation; peak memory is that of the first full-size
    run, above the inputs."""

    torch.set_num_threads(threads)
    fn = implementation(impl)

    def run(mode: str, inputs: list) -> None:
        y = fn(*inputs)
        if mode == "fwd_bwd":
            y.backward(torch.ones_like(y))
            for t in inputs:
                t.grad = None

    run("fwd_bwd", make_inputs((2, 3, 4, 2)))  # one-time initialisation, outside the measurement
    inputs = make_inputs(shape)
    rows = []
    for mode in modes:
        base = _reset_peak()
        times = []
        for i in range(warmup + runs):
            start = time.perf_counter()
            run(mode, inputs)
            if i >= warmup:
                times.append(time.perf_counter() - start)
            if i == 0:  # later runs would also count what the allocator kept from earlier ones
                peak = max(0.0, _rss_mb("VmHWM") - base)
        rows.append({"implementation": impl, "shape": "x".join(map(str, shape)),
                     "threads": threads, "mode": mode,
                     "median_ms": round(1000 * statistics.median(times), 2),
                     "peak_mb": round(peak, 1)})
    return rows


# --- orchestration --------------------------------------------------------------------------

def table(rows: list[dict]) -> str:
    """A markdown table, with the speed-up and memory ratio of mbsnet against each other row."""
    ours = {(r["shape"], r["threads"], r["mode"]): r
            for r in rows if r["implementation"] == "mbsnet"}
    lines = ["| implementation | shape | threads | mode | median_ms | peak_mb | mbsnet faster "
             "| mbsnet memory |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        o = ours.get((r["shape"], r["threads"], r["mode"]))
        speed = f"{r['median_ms'] / o['median_ms']:.1f}x" if o else ""
        mem = f"1/{r['peak_mb'] / o['peak_mb']:.1f}" if o and o["peak_mb"] > 0 else ""
        lines.append(f"| {r['implementation']} | {r['shape']} | {r['threads']} | {r['mode']} "
                     f"| {r['median_ms']:.1f} | {r['peak_mb']:.1f} | {speed} | {mem} |")
    return "\n".join(lines)


def ops_table(rows: list[dict]) -> str:
    """A markdown table of --count-ops rows, with each row's operations against chunked's."""
    chunked = {(r["shape"], r["scan_mode"]): r["ops_fwd"] + r["ops_bwd"]
               for r in rows if r["implementation"] == "chunked"}
    lines = ["| implementation | path | scan mode | shape | ops fwd | ops bwd | ops vs chunked "
             "| CPU shape | CPU fwd+bwd ms | CPU peak MB |",
             "|---|---|---|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        ratio = chunked[r["shape"], r["scan_mode"]] / (r["ops_fwd"] + r["ops_bwd"])
        lines.append(f"| {r['implementation']} | {r['path']} | {r['scan_mode']} | {r['shape']} "
                     f"| {r['ops_fwd']} | {r['ops_bwd']} | 1/{ratio:.1f} | {r['cpu_shape']} "
                     f"| {r['cpu_fwd_bwd_ms']:.1f} | {r['cpu_peak_mb']:.1f} |")
    return "\n".join(lines)


def run_worker(impl: str, shape: str, threads: int, repeats: tuple[int, int], mode: str,
               env: dict[str, str]) -> list[dict]:
    """The rows of one measurement, made by this script in a fresh subprocess."""
    cmd = [sys.executable, __file__, "--worker", impl, shape, str(threads),
           "{},{}".format(*repeats), mode]
    print(f"{impl} {shape} threads={threads} {mode} ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(proc.returncode)
    return json.loads(proc.stdout.splitlines()[-1])


def ops_rows(shapes: list[str], cpu_shape: str | None, quick: bool,
             env: dict[str, str]) -> list[dict]:
    """--count-ops: the operations of each PyTorch scan path, with its CPU time and memory."""
    rows = []
    for shape in shapes:
        timed_shape = cpu_shape or shape
        for impl in SCAN_PATHS:
            for scan_mode in ("exact", "as_coded"):
                name = f"{impl}:{scan_mode}"
                ops_fwd, ops_bwd = count_ops(scan_function(name),
                                             tuple(map(int, shape.split("x"))))
                if quick:  # in this process: a smoke test, not a memory measurement
                    timed = measure(name, tuple(map(int, timed_shape.split("x"))), 1,
                                    *QUICK_REPEATS, ["fwd_bwd"])[0]
                else:
                    timed = run_worker(name, timed_shape, 1, (1, 3), "fwd_bwd", env)[0]
                rows.append({"implementation": impl, "path": SCAN_PATHS[impl],
                             "scan_mode": scan_mode, "shape": shape, "ops_fwd": ops_fwd,
                             "ops_bwd": ops_bwd, "cpu_shape": timed_shape,
                             "cpu_fwd_bwd_ms": timed["median_ms"],
                             "cpu_peak_mb": timed["peak_mb"]})
    return rows


def timing_rows(shapes: list[str], impls: list[str], quick: bool,
                env: dict[str, str]) -> list[dict]:
    """Time and memory of each implementation, shape, thread count and mode."""
    if "mambapy" in impls and importlib.util.find_spec("mambapy") is None:
        print("mambapy not installed (pip install mbsnet[bench]): skipping it",
              file=sys.stderr)
        impls.remove("mambapy")
    modes = list(MODES)
    if quick:  # one process for all tiny cases: a smoke test, not a memory measurement
        shapes, modes = [",".join(shapes)], [",".join(modes)]
    return [row for shape in shapes for threads in THREADS for impl in impls
            for mode in modes
            for row in run_worker(impl, shape, threads,
                                  QUICK_REPEATS if quick else REPEATS[impl], mode, env)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the rows to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes, few repeats (smoke test)")
    parser.add_argument("--only", nargs="+", choices=sorted(IMPLEMENTATIONS),
                        help="run only these implementations")
    parser.add_argument("--count-ops", action="store_true",
                        help="ATen operations per call of the chunked and parallel scans")
    parser.add_argument("--cpu-shape", metavar="BxLxDxN",
                        help="--count-ops: measure CPU time and memory at this shape")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS,
                        metavar=("IMPL", "SHAPES", "THREADS", "REPEATS", "MODES"))
    args = parser.parse_args(argv)

    if args.worker:
        impl, shapes, threads, repeats, modes = args.worker
        warmup, runs = map(int, repeats.split(","))
        rows = [row for shape in shapes.split(",")
                for row in measure(impl, tuple(map(int, shape.split("x"))), int(threads),
                                   warmup, runs, modes.split(","))]
        print(json.dumps(rows))
        return 0

    root = str(Path(__file__).resolve().parents[1])
    sys.path.insert(0, root)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    shapes = ["x".join(map(str, s)) for s in (QUICK_SHAPES if args.quick else SHAPES).values()]
    if args.count_ops:
        rows = ops_rows(shapes, args.cpu_shape, args.quick, env)
        print(ops_table(rows))
    else:
        rows = timing_rows(shapes, args.only or list(IMPLEMENTATIONS), args.quick, env)
        print(table(rows))
    if args.json:
        from mbsnet.atomic import write_json

        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
