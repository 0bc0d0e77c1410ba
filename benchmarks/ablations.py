"""Benchmark every configured ablation side by side with `mbsnet profile`.

    python benchmarks/ablations.py [--config config.yaml] [--json FILE] [--quick]
        [--batch-size 6 --crop-seconds 2] [--scan exact|both]

Each ablation is profiled in a fresh subprocess (`python -m mbsnet profile ...
--no-budget-check`, so an ablation over the memory budget is still measured) on the
training device at the configured batch size and crop length. Prints a table of
parameters, MACs per second of audio, peak training-step memory, median training-step
time and inference real-time factor, beside the original implementations' figures, and
checks two targets:

- every Mamba ablation's training step at most 1.5x BSRNN's, measured in the same run;
- every ablation's peak training memory below the original implementation's figure
  (only comparable at batch 6 and 2 s crops, the setting the originals were measured at).

With ``--scan both`` every Mamba ablation is also profiled with ``scan: as_coded`` (the
original code's arithmetic) as ``NAME_as_coded``, and that row is compared with its exact
twin: its training step and peak memory at most 1.2x the exact scan's.

--quick profiles at batch 1 and 0.5 s crops with a single step of each kind: a smoke
test of the machinery, not figures to compare.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tables import machine, text_table  # noqa: E402

from mbsnet.config import ablation_config, load_config  # noqa: E402
from mbsnet.models import parse_model_config  # noqa: E402

BASELINE = "bsrnn"
STEP_RATIO_TARGET = 1.5
AS_CODED_RATIO_TARGET = 1.2   # as_coded scan vs exact: training step and peak memory
# The original implementations, once, on this 2-core CPU (loaded) at batch 6 and 2 s crops:
# training-step seconds (generator forward/backward) and peak training memory in GB.
ORIGINAL = {
    "bsrnn": (8.7, 3.8),
    "abl1": (112.0, 4.5),
    "abl2": (309.0, 8.0),
    "abl3": (266.0, 6.6),
    "optimized": (116.0, 14.2),
}
ORIGINAL_SETTING = (6, 2.0)   # (batch_size, crop_seconds)


def config_at(config_path: Path, workdir: Path, batch_size: int, crop_seconds: float) -> Path:
    """A copy of the config with every ablation at this batch size and crop length."""
    raw = yaml.safe_load(config_path.read_text())
    raw.setdefault("training", {}).update(batch_size=batch_size, crop_seconds=crop_seconds)
    for entry in raw.get("ablations", {}).values():
        for key in ("batch_size", "crop_seconds"):
            (entry.get("training") or {}).pop(key, None)
    path = workdir / f"batch{batch_size}-crop{crop_seconds:g}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def with_as_coded_twins(config_path: Path, workdir: Path, names: list[str]
                        ) -> tuple[Path, dict[str, str]]:
    """A copy of the config with an as_coded twin (``NAME_as_coded``, the same model with
    ``scan: as_coded``) of every Mamba ablation among ``names`` whose scan is exact.

    Returns the copy and {twin: exact ablation}; a twin already configured under that name
    is profiled as it is.
    """
    raw = yaml.safe_load(config_path.read_text())
    ablations = raw["ablations"]
    twins = {}
    for name in names:
        spec = parse_model_config(ablations[name]["model"], f"ablations.{name}.model")
        if not spec.has_mamba or spec.scan != "exact":
            continue
        twin = f"{name}_as_coded"
        if twin not in ablations:
            entry = json.loads(json.dumps(ablations[name]))
            entry["model"]["scan"] = "as_coded"
            ablations[twin] = entry
        twins[twin] = name
    path = workdir / f"{config_path.stem}-as_coded.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, twins


def profile_one(config: Path, name: str, out: Path, args: argparse.Namespace) -> dict:
    """Run `mbsnet profile` for one ablation in a fresh process; its profile.json, or an
    ``error`` entry when it failed."""
    command = [sys.executable, "-m", "mbsnet", "profile", "--config", str(config),
               "--ablation", name, "--out", str(out), "--no-budget-check",
               "--warmup-steps", str(args.warmup_steps), "--steps", str(args.steps),
               "--inference-runs", str(args.inference_runs)]
    for flag in ("threads", "device"):
        if getattr(args, flag) is not None:
            command += [f"--{flag}", str(getattr(args, flag))]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, stdout=sys.stderr, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if done.returncode != 0 or not out.exists():
        return {"ablation": name, "error": f"mbsnet profile exited with {done.returncode}",
                "wall_seconds": wall}
    return {**json.loads(out.read_text()), "wall_seconds": wall}


def beside_their_twins(names: list[str], twins: dict[str, str]) -> list[str]:
    """``names`` with each ablation followed by its as_coded twin, every name once."""
    ordered: list[str] = []
    for name in names:
        for item in (name, *(twin for twin, exact in twins.items() if exact == name)):
            if item not in ordered:
                ordered.append(item)
    return ordered


def with_targets(rows: list[dict], comparable: bool, twins: dict[str, str] | None = None) -> None:
    """Add the original figures and the target verdicts to each row (in place); an as_coded
    twin (``twins``: {twin: exact ablation}) is also compared with its exact ablation."""
    twins = twins or {}
    base = next((r for r in rows if r["ablation"] == BASELINE and "error" not in r), None)
    by_name = {r["ablation"]: r for r in rows if "error" not in r}
    for row in rows:
        exact = by_name.get(twins.get(row["ablation"]))
        if exact is not None and "error" not in row:
            row["exact_twin"] = exact["ablation"]
            row["step_vs_exact"] = row["train_step_seconds"] / exact["train_step_seconds"]
            row["peak_vs_exact"] = row["peak_train_memory_mb"] / exact["peak_train_memory_mb"]
            row["as_coded_target_met"] = max(row["step_vs_exact"],
                                             row["peak_vs_exact"]) <= AS_CODED_RATIO_TARGET
        original = ORIGINAL.get(twins.get(row["ablation"], row["ablation"]))
        row["original_step_seconds"], row["original_peak_gb"] = original or (None, None)
        if "error" in row:
            continue
        is_mamba = row["flops_per_second_by_source"]["scan"] > 0
        if base is not None and row is not base:
            row["step_vs_baseline"] = row["train_step_seconds"] / base["train_step_seconds"]
            if is_mamba:
                row["step_target_met"] = row["step_vs_baseline"] <= STEP_RATIO_TARGET
        if original and comparable:
            row["memory_target_met"] = row["peak_train_memory_mb"] / 1024 < original[1]


def _memory(mb: float) -> str:
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:,.0f} MB"


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _verdict(row: dict, key: str) -> str:
    return {True: "ok", False: "MISSED"}.get(row.get(key), "-")


def table(rows: list[dict]) -> str:
    header = ("ablation", "params", "claimed", "GMAC/s", "peak mem", "step s", "x bsrnn",
              "RTF", "orig step s", "orig peak", "step<=1.5x", "peak<orig", "step x exact",
              "peak x exact", "<=1.2x exact", "profile s")
    lines = [header]
    for r in rows:
        if "error" in r:
            lines.append((r["ablation"], r["error"], *[""] * (len(header) - 2)))
            continue
        params = r["params"]
        lines.append((
            r["ablation"], f"{params['total'] / 1e6:.2f} M",
            f"{params['claimed'] / 1e6:.2f} M" if params["claimed"] else "-",
            f"{r['macs_per_second'] / 1e9:.2f}",
            _memory(r["peak_train_memory_mb"]),
            f"{r['train_step_seconds']:.2f}", _cell(r.get("step_vs_baseline"), ".2f"),
            f"{r['inference_rtf']:.3f}", _cell(r["original_step_seconds"], ".1f"),
            _cell(r["original_peak_gb"], ".1f") + (" GB" if r["original_peak_gb"] else ""),
            _verdict(r, "step_target_met"), _verdict(r, "memory_target_met"),
            _cell(r.get("step_vs_exact"), ".2f"), _cell(r.get("peak_vs_exact"), ".2f"),
            _verdict(r, "as_coded_target_met"), f"{r['wall_seconds']:.0f}"))
    return text_table(lines)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--quick", action="store_true",
                        help="batch 1, 0.5 s crops, one step of each kind (smoke test)")
    parser.add_argument("--batch-size", type=int,
                        help="profile every ablation at this batch size (default: the config's)")
    parser.add_argument("--crop-seconds", type=float,
                        help="profile every ablation at this crop length (default: the config's)")
    parser.add_argument("--ablations", nargs="+", help="only these (default: all configured)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: resources.threads)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--inference-runs", type=int, default=3)
    parser.add_argument("--scan", choices=("exact", "both"), default="exact",
                        help="both: also profile every Mamba ablation with scan: as_coded")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mbsnet-ablations-") as tmp:
        workdir = Path(tmp)
        config_path = args.config.resolve()
        if args.quick:
            args.batch_size, args.crop_seconds = 1, 0.5
            args.warmup_steps, args.steps, args.inference_runs = 0, 1, 1
        if args.batch_size is not None or args.crop_seconds is not None:
            base = load_config(config_path)["training"]
            config_path = config_at(config_path, workdir,
                                    args.batch_size or base["batch_size"],
                                    args.crop_seconds or base["crop_seconds"])
        config = load_config(config_path)
        names = args.ablations or list(config["ablations"])
        twins: dict[str, str] = {}
        if args.scan == "both":
            config_path, twins = with_as_coded_twins(config_path, workdir, names)
            config = load_config(config_path)
            names = beside_their_twins(names, twins)
        settings = {(ablation_config(config, n)["training"]["batch_size"],
                     ablation_config(config, n)["training"]["crop_seconds"]) for n in names}
        comparable = settings == {ORIGINAL_SETTING}
        before = machine()
        rows = []
        for i, name in enumerate(names, 1):
            print(f"== {name} ({i}/{len(names)})", file=sys.stderr, flush=True)
            rows.append(profile_one(config_path, name, workdir / f"{name}.json", args))
    with_targets(rows, comparable, twins)

    print(table(rows))
    batch, crop = sorted(settings)[0] if len(settings) == 1 else ("mixed", "mixed")
    print(f"\nbatch {batch}, crops {crop} s; step = one full training step (generator + "
          f"discriminator + PESQ targets), median of {args.steps}. Original figures: the old "
          f"implementations at batch 6, 2 s crops (step: generator forward/backward).")
    if not comparable:
        print("Not at batch 6 / 2 s crops: the memory target is not checked.")
    if twins:
        print(f"NAME_as_coded: NAME with scan: as_coded; x exact: its step and peak over "
              f"NAME's (target <= {AS_CODED_RATIO_TARGET}x).")
    print(f"Load average before: {before['load_average']}, after: {machine()['load_average']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"machine": before, "load_average_after": machine()["load_average"],
                  "config": str(args.config), "quick": args.quick, "batch_size": batch,
                  "crop_seconds": crop, "comparable_to_original": comparable,
                  "step_ratio_target": STEP_RATIO_TARGET,
                  "as_coded_ratio_target": AS_CODED_RATIO_TARGET, "as_coded_twins": twins,
                  "rows": rows}
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
