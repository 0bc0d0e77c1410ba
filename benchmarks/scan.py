"""Benchmark the selective scan: mbsnet's against the old loop and mambapy's parallel scan.

    python benchmarks/scan.py [--json FILE] [--quick]

Times forward and forward+backward (median of several runs after a warm-up) and measures the
peak extra resident memory of each, for every implementation, shape, thread count and mode,
each in a fresh subprocess (--quick: one per implementation and thread count). Prints a
table; --json writes rows {implementation, shape, threads, mode: "fwd"|"fwd_bwd", median_ms,
peak_mb}.
"fwd" is the training forward (inputs require grad, so whatever backward needs is kept).
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

SHAPES = {  # (batch, length, dim, d_state)
    "intra-band": (186, 251, 128, 16),
    "cross-band": (1506, 31, 128, 16),
}
QUICK_SHAPES = {"intra-band": (4, 37, 8, 4), "cross-band": (12, 7, 8, 4)}
THREADS = (1, 2)
MODES = ("fwd", "fwd_bwd")
# (warm-up runs, timed runs) per implementation, after a one-time warm-up on a tiny shape;
# the old loop takes ~30 s per full-size run, so it gets no second full-size warm-up
REPEATS = {"mbsnet": (1, 5), "mambapy": (1, 3), "upstream_loop": (0, 2)}
QUICK_REPEATS = (1, 2)


# --- the implementations, all with mbsnet.scan's layout --------------------------------------

def upstream_loop(x, delta, A, B, C, D, chunk=64):
    """The old algorithm: exp(Δ·A) materialised per 64-step chunk as [batch, chunk, D, N],
    a Python loop over the steps inside it, autograd through everything (clamps left out)."""
    import torch

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
    import torch
    from mambapy.pscan import pscan

    decay = torch.exp(delta[..., None] * A)
    drive = (delta * x)[..., None] * B[:, :, None, :]
    hs = pscan(decay, drive)
    return (hs @ C[..., None]).squeeze(-1) + x * D


def mbsnet_scan(x, delta, A, B, C, D):
    from mbsnet.scan import selective_scan

    return selective_scan(x, delta, A, B, C, D)


IMPLEMENTATIONS = {"mbsnet": mbsnet_scan, "upstream_loop": upstream_loop, "mambapy": mambapy_scan}


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
    import torch

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
    import torch

    torch.set_num_threads(threads)
    fn = IMPLEMENTATIONS[impl]

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the rows to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes, few repeats (smoke test)")
    parser.add_argument("--only", nargs="+", choices=sorted(IMPLEMENTATIONS),
                        help="run only these implementations")
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

    impls = args.only or list(IMPLEMENTATIONS)
    if "mambapy" in impls and importlib.util.find_spec("mambapy") is None:
        print("mambapy not installed (pip install mbsnet[bench]): skipping it", file=sys.stderr)
        impls.remove("mambapy")
    shapes = ["x".join(map(str, s)) for s in (QUICK_SHAPES if args.quick else SHAPES).values()]
    modes = list(MODES)
    if args.quick:  # one process for all tiny cases: a smoke test, not a memory measurement
        shapes, modes = [",".join(shapes)], [",".join(modes)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    rows = []
    for shape in shapes:
        for threads in THREADS:
            for impl in impls:
                warmup, runs = QUICK_REPEATS if args.quick else REPEATS[impl]
                for mode in modes:
                    cmd = [sys.executable, __file__, "--worker", impl, shape, str(threads),
                           f"{warmup},{runs}", mode]
                    print(f"{impl} {shape} threads={threads} {mode} ...", flush=True)
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    if proc.returncode != 0:
                        sys.stderr.write(proc.stderr)
                        return proc.returncode
                    rows.extend(json.loads(proc.stdout.splitlines()[-1]))
    print(table(rows))
    if args.json:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from mbsnet.atomic import write_json

        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
