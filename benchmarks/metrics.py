"""Speed of the metrics: seconds per utterance for each metric, the parallel speedup of
score_many, and the vectorised composite measures against a straightforward per-frame
loop of the same definitions (the baseline below, measured in the same run).

    python benchmarks/metrics.py [--json FILE] [--quick]

Inputs are the fixture pairs in tests/data/metrics (16 kHz, 4-5.5 s each).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.linalg import toeplitz

from mbsnet.metrics import composite as vec
from mbsnet.metrics import score_many
from mbsnet.metrics.standard import pesq_wb, si_sdr, stoi

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "data" / "metrics"
SR = 16000


# ---------------------------------------------------------------------------- baseline
# One frame at a time, written directly from the definitions (no vectorisation).

def _frame_starts(n: int) -> range:
    win, hop = vec.frame_geometry(SR)
    return range(0, vec.num_frames(n, SR) * hop, hop)


def loop_llr(clean: np.ndarray, processed: np.ndarray) -> np.ndarray:
    win, _ = vec.frame_geometry(SR)
    window, order = vec.hann(win), 16
    out = []
    for start in _frame_starts(len(clean)):
        polys, lags = [], []
        for signal in (clean, processed):
            frame = signal[start: start + win] * window
            r = np.array([np.dot(frame[: win - k], frame[k:]) for k in range(order + 1)])
            r[0] += vec.LPC_FLOOR
            a, err = [1.0], r[0]
            for i in range(1, order + 1):
                k = -sum(a[j] * r[i - j] for j in range(i)) / err
                a = [1.0] + [a[j] + k * a[i - j] for j in range(1, i)] + [k]
                err *= 1.0 - k * k
            polys.append(np.array(a))
            lags.append(r)
        a_clean, a_proc = polys
        t = toeplitz(lags[0])
        out.append(math.log((a_proc @ t @ a_proc) / (a_clean @ t @ a_clean)))
    return np.array(out)


def loop_wss(clean: np.ndarray, processed: np.ndarray) -> np.ndarray:
    win, _ = vec.frame_geometry(SR)
    window, n_fft = vec.hann(win), 1024
    filters = vec.critical_band_filters(SR, n_fft // 2)
    out = []
    for start in _frame_starts(len(clean)):
        energies, slopes, weights = [], [], []
        for signal in (clean, processed):
            frame = signal[start: start + win] * window / vec.WSS_SCALE
            power = np.abs(np.fft.fft(frame, n_fft)[: n_fft // 2]) ** 2
            energy = 10 * np.log10(np.maximum(filters @ power, 1e-10))
            slope = energy[1:] - energy[:-1]
            peaks = np.empty(len(slope))
            for i in range(len(slope)):
                n = i
                if slope[i] > 0:
                    while n < len(slope) and slope[n] > 0:
                        n += 1
                    peaks[i] = energy[n - 1]
                else:
                    while n >= 0 and slope[n] <= 0:
                        n -= 1
                    peaks[i] = energy[n + 1]
            w_max = vec.WSS_KMAX / (vec.WSS_KMAX + energy.max() - energy[:-1])
            w_loc = vec.WSS_KLOCMAX / (vec.WSS_KLOCMAX + peaks - energy[:-1])
            energies.append(energy)
            slopes.append(slope)
            weights.append(w_max * w_loc)
        w = (weights[0] + weights[1]) / 2
        out.append(np.dot(w, (slopes[0] - slopes[1]) ** 2) / np.sum(w))
    return np.array(out)


def loop_segsnr(clean: np.ndarray, processed: np.ndarray) -> np.ndarray:
    win, _ = vec.frame_geometry(SR)
    window, eps = vec.hann(win), np.finfo(float).eps
    out = []
    for start in _frame_starts(len(clean)):
        c = clean[start: start + win] * window
        p = processed[start: start + win] * window
        snr = 10 * math.log10(np.sum(c * c) / (np.sum((c - p) ** 2) + eps) + eps)
        out.append(min(max(snr, vec.SEGSNR_RANGE[0]), vec.SEGSNR_RANGE[1]))
    return np.array(out)


# ---------------------------------------------------------------------------- timing

def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def load_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    names = sorted(json.loads((FIXTURES / "expected.json").read_text()))
    return [tuple(sf.read(FIXTURES / f"{n}_{kind}.wav", dtype="float64")[0]
                  for kind in ("clean", "degraded")) for n in names]


def per_utterance(fn, pairs, repeats: int) -> float:
    return sum(best_of(functools.partial(fn, c, d), repeats) for c, d in pairs) / len(pairs)


def run(quick: bool) -> dict:
    pairs = load_pairs()
    repeats = 1 if quick else 3
    seconds = sum(len(c) for c, _ in pairs) / SR / len(pairs)

    metrics = {
        "pesq_wb": per_utterance(pesq_wb, pairs, repeats),
        "stoi": per_utterance(stoi, pairs, repeats),
        "estoi": per_utterance(lambda c, d: stoi(c, d, extended=True), pairs, repeats),
        "si_sdr": per_utterance(si_sdr, pairs, repeats),
        "composite (llr+wss+segsnr)": per_utterance(
            lambda c, d: vec.composite_scores(c, d, 2.0), pairs, repeats),
    }

    components = {}
    for name, fast, slow in (("llr", vec.llr_frames, loop_llr),
                             ("wss", vec.wss_frames, loop_wss),
                             ("segsnr", vec.segsnr_frames, loop_segsnr)):
        diff = max(float(np.max(np.abs(fast(c, d, SR) - slow(c, d)))) for c, d in pairs)
        t_fast = per_utterance(lambda c, d, fast=fast: fast(c, d, SR), pairs, repeats)
        t_slow = per_utterance(slow, pairs, 1)
        components[name] = {"vectorised_s": t_fast, "loop_s": t_slow,
                            "speedup": t_slow / t_fast, "max_abs_diff": diff}
    total_fast = sum(c["vectorised_s"] for c in components.values())
    total_slow = sum(c["loop_s"] for c in components.values())
    components["all three"] = {"vectorised_s": total_fast, "loop_s": total_slow,
                               "speedup": total_slow / total_fast,
                               "max_abs_diff": max(c["max_abs_diff"] for c in components.values())}

    batch = pairs * (2 if quick else 8)
    start = time.perf_counter()
    serial = score_many(batch, workers=1, progress=False)
    t_serial = time.perf_counter() - start
    workers = min(2, os.cpu_count() or 1)
    start = time.perf_counter()
    parallel = score_many(batch, workers=workers, progress=False)
    t_parallel = time.perf_counter() - start
    same = all(math.isclose(a[m], b[m], rel_tol=1e-12)
               for a, b in zip(serial, parallel, strict=True) for m in a if m != "error")
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__},
        "quick": quick,
        "utterance_seconds": seconds,
        "per_utterance_s": metrics,
        "composite_vs_loop": components,
        "parallel": {"utterances": len(batch), "workers": workers,
                     "serial_s": t_serial, "parallel_s": t_parallel,
                     "serial_s_per_utt": t_serial / len(batch),
                     "speedup": t_serial / t_parallel, "same_numbers": same},
    }


def print_table(result: dict) -> None:
    print(f"utterances of {result['utterance_seconds']:.2f} s on average, "
          f"{result['machine']['cpus']} CPUs")
    print(f"\n{'metric':30s} {'s/utterance':>12s}")
    for name, value in result["per_utterance_s"].items():
        print(f"{name:30s} {value:12.4f}")
    print(f"\n{'measure':12s} {'vectorised s':>13s} {'loop s':>9s} {'speedup':>8s} "
          f"{'max |diff|':>11s}")
    for name, c in result["composite_vs_loop"].items():
        print(f"{name:12s} {c['vectorised_s']:13.4f} {c['loop_s']:9.4f} {c['speedup']:7.1f}x "
              f"{c['max_abs_diff']:11.2e}")
    p = result["parallel"]
    print(f"\nscore_many, {p['utterances']} utterances, all metrics: serial {p['serial_s']:.2f} s, "
          f"{p['workers']} workers {p['parallel_s']:.2f} s -> {p['speedup']:.2f}x "
          f"(same numbers: {p['same_numbers']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer utterances")
    args = parser.parse_args()
    result = run(args.quick)
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
