"""Check the GPU paths on a machine that has one; prints a table and writes JSON.

What it runs (each a real `mbsnet` command, as the workflow runs them):
- a small synthetic corpus (`mbsnet prepare`);
- every ablation of the config: N training steps in fp32 and in bf16, and for the Mamba
  models once with the scan the machine picks (mamba_ssm when installed) and once forced
  to the fallback (`MBSNET_SCAN=parallel`);
- two trainings started at once without CUDA_VISIBLE_DEVICES, which must claim two
  different GPUs (skipped with fewer than two);
- the scan's exactness on the device: mamba_ssm and the fallback against the reference.

Usage: scripts/gpu-check.sh [--steps 20] [--device cuda] [--ablations a,b] [--out DIR]
`--device cpu --steps 2 --ablations ...` runs the same logic on a CPU (for its own test).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "config.yaml"),
                        help="config whose ablations are checked (default: %(default)s)")
    parser.add_argument("--ablations", default=None,
                        help="comma-separated subset of the config's ablations (default: all)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--batch-size", type=int, default=6)
    parser.add_argument("--crop-seconds", type=float, default=2.0)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--out", default=str(ROOT / "results" / "gpu-check"),
                        help="work folder; its summary is OUT/gpu-check.json")
    return parser.parse_args(argv)


def check_config(base: dict[str, Any], args: argparse.Namespace, precision: str) -> dict:
    """The base config's ablations with a short training budget and a tiny corpus."""
    config = {
        "data": {"source": "synthetic", "valid_speakers": 1,
                 "synthetic": {"seed": 0, "train_utterances": 24, "test_utterances": 4,
                               "train_speakers": 3, "test_speakers": 1}},
        "seeds": [0],
        "ablations": base["ablations"],
        "training": {**base.get("training", {}), "epochs": 1, "steps_per_epoch": args.steps,
                     "batch_size": args.batch_size, "crop_seconds": args.crop_seconds,
                     "precision": precision, "device": args.device, "metricgan_from": 1.0},
        "resources": {**base.get("resources", {}), "threads": 2},
    }
    if "report" in base:
        config["report"] = base["report"]
    return config


def mbsnet(*arguments: str, env: dict[str, str] | None = None, log: Path) -> int:
    """Run one mbsnet command, its output into ``log``; returns the exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as stream:
        done = subprocess.run([sys.executable, "-m", "mbsnet", *arguments], cwd=ROOT,
                              env={**os.environ, **(env or {})}, stdout=stream,
                              stderr=subprocess.STDOUT, check=False)
    return done.returncode


def has_mamba(model: dict[str, Any]) -> bool:
    return any(block["type"] == "mamba" for stage in model["stages"]
               for block in stage["blocks"])


def read_run(out: Path, rc: int, log: Path) -> dict[str, Any]:
    """The figures of one finished training run (or its failure and last log line)."""
    summary_path = out / "train_summary.json"
    if rc != 0 or not summary_path.exists():
        lines = log.read_text().strip().splitlines() if log.exists() else []
        return {"ok": False, "error": lines[-1] if lines else f"exit {rc}"}
    summary = json.loads(summary_path.read_text())
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s.get("kind") == "step"]
    times = [s["step_seconds"] for s in steps[1:]] or [s["step_seconds"] for s in steps]
    losses = [s["gen_loss"] for s in steps if s.get("gen_loss") is not None]
    return {
        "ok": summary["skipped_steps"] == 0 and bool(losses),
        "device": summary.get("device"), "scan": summary.get("scan"),
        "precision_ran": summary.get("precision"),
        "steps": summary["steps"], "skipped": summary["skipped_steps"],
        "step_s": round(statistics.median(times), 4) if times else None,
        "peak_mb": summary.get("peak_memory_mb"),
        "last_loss": losses[-1] if losses else None,
    }


def train_runs(base: dict, names: list[str], args: argparse.Namespace, work: Path,
               data: Path) -> list[dict]:
    rows = []
    for precision in ("fp32", "bf16"):
        config_path = work / f"config-{precision}.yaml"
        config_path.write_text(yaml.safe_dump(check_config(base, args, precision)))
        for name in names:
            scans = ["auto", "parallel"] if has_mamba(base["ablations"][name]["model"]) \
                else ["auto"]
            if args.device == "cpu":
                scans = ["auto"]
            for scan in scans:
                out = work / "runs" / f"{name}-{precision}-{scan}"
                log = work / "logs" / f"{name}-{precision}-{scan}.log"
                started = time.monotonic()
                rc = mbsnet("train", "--config", str(config_path), "--ablation", name,
                            "--seed", "0", "--data", str(data), "--out", str(out),
                            env={"MBSNET_SCAN": scan}, log=log)
                row = {"ablation": name, "precision": precision, "requested_scan": scan,
                       "wall_s": round(time.monotonic() - started, 1),
                       **read_run(out, rc, log)}
                rows.append(row)
                print(format_row(row), flush=True)
    return rows


def concurrent_claims(base: dict, name: str, args: argparse.Namespace, work: Path,
                      data: Path) -> dict[str, Any]:
    """Two trainings at once, no CUDA_VISIBLE_DEVICES: they must get different GPUs."""
    import torch

    if args.device != "cuda" or torch.cuda.device_count() < 2:
        return {"skipped": "fewer than two GPUs visible"}
    config_path = work / "config-fp32.yaml"
    env = {key: value for key, value in os.environ.items() if key != "CUDA_VISIBLE_DEVICES"}

    def one(index: int) -> dict[str, Any]:
        out = work / "runs" / f"concurrent{index}"
        log = work / "logs" / f"concurrent{index}.log"
        with open(log, "w") as stream:
            rc = subprocess.run([sys.executable, "-m", "mbsnet", "train", "--config",
                                 str(config_path), "--ablation", name, "--seed", str(index),
                                 "--data", str(data), "--out", str(out)], cwd=ROOT, env=env,
                                stdout=stream, stderr=subprocess.STDOUT, check=False).returncode
        return read_run(out, rc, log)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(one, (1, 2)))
    devices = [run.get("device") for run in runs]
    return {"devices": devices, "distinct": len(set(devices)) == 2 and all(devices)}


def scan_exactness(device: str) -> list[dict[str, Any]]:
    """Every scan implementation usable here against the reference, on the device."""
    import torch

    from mbsnet.models import scan

    generator = torch.Generator().manual_seed(0)
    batch, length, dim, n = 8, 200, 64, 16

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device)

    x, B, C = rand(batch, length, dim), rand(batch, length, n), rand(batch, length, n)
    delta = torch.nn.functional.softplus(rand(batch, length, dim) - 3)
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(dim, 1).to(device)
    D = rand(dim)
    rows = []
    for mode in scan.SCAN_MODES:
        expected = scan.selective_scan_reference(x, delta, A, B, C, D, mode=mode)
        for forced in ("mamba_ssm", "parallel", "native", "chunked"):
            os.environ["MBSNET_SCAN"] = forced
            try:
                y = scan.selective_scan(x, delta, A, B, C, D, mode=mode)
            except Exception as error:  # noqa: BLE001 - reported, not raised
                rows.append({"mode": mode, "scan": forced, "error": str(error).splitlines()[0]})
                continue
            finally:
                os.environ.pop("MBSNET_SCAN", None)
            rel = ((y - expected).abs().max() / expected.abs().max()).item()
            rows.append({"mode": mode, "scan": forced, "rel_error": rel, "ok": rel <= 1e-5})
    return rows


def format_row(row: dict[str, Any]) -> str:
    if not row.get("ok") and "error" in row:
        return (f"{row['ablation']:<20} {row['precision']:<5} {row['requested_scan']:<9} "
                f"FAILED: {row['error']}")
    return (f"{row['ablation']:<20} {row['precision']:<5} {row['requested_scan']:<9} "
            f"{str(row.get('scan')):<10} {str(row.get('precision_ran')):<5} "
            f"{str(row.get('device')):<28} "
            f"{row['step_s']!s:>8} {row['peak_mb']!s:>9} {row['skipped']:>4}  "
            f"{'ok' if row['ok'] else 'FAILED'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(Path(args.config).read_text())
    names = args.ablations.split(",") if args.ablations else list(base["ablations"])
    unknown = sorted(set(names) - set(base["ablations"]))
    if unknown:
        print(f"--ablations: {', '.join(unknown)} not in {args.config}", file=sys.stderr)
        return 2

    data_config = work / "config-fp32.yaml"
    data_config.write_text(yaml.safe_dump(check_config(base, args, "fp32")))
    if mbsnet("prepare", "--config", str(data_config), "--out", str(work / "data"),
              log=work / "logs" / "prepare.log") != 0:
        print(f"mbsnet prepare failed; see {work / 'logs' / 'prepare.log'}", file=sys.stderr)
        return 1
    data = work / "data" / "manifest.tsv"

    print(f"{'ablation':<20} {'prec':<5} {'requested':<9} {'scan':<10} {'ran':<5} "
          f"{'device':<28} "
          f"{'step (s)':>8} {'peak (MB)':>9} {'skip':>4}")
    rows = train_runs(base, names, args, work, data)
    claims = concurrent_claims(base, names[0], args, work, data)
    print(f"two concurrent trainings: {claims}")
    exactness = scan_exactness(args.device)
    for row in exactness:
        print(f"scan {row['mode']:<9} {row['scan']:<10} "
              f"{row.get('rel_error', row.get('error'))}")

    result = {"device": args.device, "steps": args.steps, "batch_size": args.batch_size,
              "crop_seconds": args.crop_seconds, "training": rows,
              "concurrent": claims, "scan_exactness": exactness}
    (work / "gpu-check.json").write_text(json.dumps(result, indent=2) + "\n")
    failed = [r for r in rows if not r["ok"]] + [r for r in exactness
                                                  if "ok" in r and not r["ok"]]
    if claims.get("distinct") is False:
        failed.append(claims)
    print(f"wrote {work / 'gpu-check.json'}; {len(failed)} failed check(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
