"""Training throughput of one ablation at 1 and 2 (or more) data-parallel processes.

    python benchmarks/scaling.py [--config config.yaml] [--ablation abl1] [--processes 1 2]
        [--steps 8] [--batch-size 4] [--crop-seconds 1] [--threads 1] [--device cpu]
        [--data results/data/manifest.tsv] [--json FILE]

Each point is a fresh `mbsnet train` of ``--steps`` steps of the same global batch
(``torchrun --standalone --nproc-per-node N`` for N > 1), every process with ``--threads``
threads, and one more point: a single process with as many threads as the largest run
has in all (the same cores, used by threads instead of processes). Throughput is
utterances per second of training steps: the global batch over the median step time,
leaving out the first step (warm-up); the summary's own figure (whole run, first step
included) is kept beside it. Validation, start-up and checkpoints are not counted but
the wall time of each run is reported.

Without ``--data`` a small synthetic corpus is prepared in a temporary folder (eSpeak NG
speech, about a minute). The table and the JSON say how busy the machine was: on a
machine with fewer free cores than processes x threads the figures show contention,
not scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import machine, text_table  # noqa: E402

BIN = Path(sys.executable).parent
SMALL_CORPUS = {"source": "synthetic", "valid_speakers": 1,
                "synthetic": {"seed": 0, "train_utterances": 16, "test_utterances": 2,
                              "train_speakers": 3, "test_speakers": 1}}


def bench_config(args: argparse.Namespace, data: dict, processes: int) -> dict:
    """config.yaml with one ablation and a short training of ``processes`` processes."""
    raw = yaml.safe_load(args.config.read_text())
    raw["data"] = data
    raw["ablations"] = {args.ablation: {"model": raw["ablations"][args.ablation]["model"]}}
    raw.setdefault("training", {}).update(
        epochs=1, steps_per_epoch=args.steps, batch_size=args.batch_size,
        crop_seconds=args.crop_seconds, devices=processes, device=args.device,
        pesq_workers=0, data_workers=0, checkpoint_minutes=1e6)
    raw.setdefault("report", {})["baseline"] = args.ablation
    return raw


def prepare_corpus(args: argparse.Namespace, workdir: Path) -> Path:
    config = bench_config(args, SMALL_CORPUS, 1)
    path = workdir / "prepare.yaml"
    path.write_text(yaml.safe_dump(config))
    out = workdir / "data"
    subprocess.run([str(BIN / "mbsnet"), "prepare", "--config", str(path), "--out", str(out)],
                   check=True, stdout=sys.stderr)
    return out / "manifest.tsv"


def train_once(args: argparse.Namespace, workdir: Path, manifest: Path, processes: int,
               threads: int, data: dict) -> dict:
    """One training; its throughput and settings."""
    name = f"p{processes}-t{threads}"
    config = workdir / f"{name}.yaml"
    config.write_text(yaml.safe_dump(bench_config(args, data, processes)))
    out = workdir / name
    command = [str(BIN / "mbsnet"), "train", "--config", str(config), "--ablation",
               args.ablation, "--seed", "0", "--out", str(out), "--data", str(manifest),
               "--threads", str(threads)]
    if processes > 1:
        command = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(processes),
                   "--no-python", *command]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
               OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=sys.stderr, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    row = {"processes": processes, "threads_per_process": threads, "wall_seconds": wall}
    if done.returncode != 0:
        return {**row, "error": f"mbsnet train exited with {done.returncode}"}
    summary = json.loads((out / "train_summary.json").read_text())
    steps = [json.loads(line)["step_seconds"] for line in
             (out / "train_log.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "step"]
    median = statistics.median(steps[1:] or steps)
    return {**row, "batch_size": summary["batch_size"], "micro_batch": summary["micro_batch"],
            "process_devices": summary["process_devices"], "steps": len(steps),
            "median_step_seconds": median,
            "utterances_per_second": summary["batch_size"] / median,
            "summary_utterances_per_second": summary["utterances_per_second"]}


def table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["processes"] == 1 and "error" not in r), None)
    lines = [("processes", "threads each", "batch", "micro", "median step s", "utt/s",
              "x 1 process", "wall s")]
    for r in rows:
        if "error" in r:
            lines.append((str(r["processes"]), str(r["threads_per_process"]), r["error"],
                          "", "", "", "", f"{r['wall_seconds']:.0f}"))
            continue
        ratio = r["utterances_per_second"] / base["utterances_per_second"] if base else None
        lines.append((str(r["processes"]), str(r["threads_per_process"]), str(r["batch_size"]),
                      str(r["micro_batch"]), f"{r['median_step_seconds']:.3f}",
                      f"{r['utterances_per_second']:.2f}",
                      "-" if ratio is None else f"{ratio:.2f}", f"{r['wall_seconds']:.0f}"))
    return text_table(lines)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument("--ablation", default="abl1")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4,
                        help="the global batch (a multiple of every process count)")
    parser.add_argument("--crop-seconds", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1, help="threads of each process")
    parser.add_argument("--device", choices=("cpu", "auto", "cuda"), default="cpu")
    parser.add_argument("--data", type=Path, help="a prepared manifest.tsv (default: make one)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if any(args.batch_size % n for n in args.processes):
        parser.error(f"--batch-size {args.batch_size} must be a multiple of every --processes")

    before = machine()
    with tempfile.TemporaryDirectory(prefix="mbsnet-scaling-") as tmp:
        workdir = Path(tmp)
        manifest = args.data.resolve() if args.data else prepare_corpus(args, workdir)
        data = SMALL_CORPUS
        runs = [(n, args.threads) for n in args.processes]
        most = max(args.processes)
        if most > 1:
            runs.append((1, most * args.threads))   # the same cores as threads
        rows = []
        for processes, threads in runs:
            print(f"== {processes} process(es) x {threads} thread(s)", file=sys.stderr,
                  flush=True)
            rows.append(train_once(args, workdir, manifest, processes, threads, data))
    after = machine()
    print(table(rows))
    print(f"\n{args.ablation}, global batch {args.batch_size}, {args.crop_seconds:g} s crops, "
          f"{args.steps} steps, device {args.device}; {before['cpu_count']} CPUs, load "
          f"average before {before['load_average']}, after {after['load_average']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"machine": before, "load_average_after": after["load_average"],
                  "ablation": args.ablation, "steps": args.steps,
                  "batch_size": args.batch_size, "crop_seconds": args.crop_seconds,
                  "device": args.device, "rows": rows}
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
