"""Interrupting Snakemake stops running trainings through their checkpoint, and a plain
rerun resumes them (no --rerun-incomplete)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from .helpers import TINY_CONFIG
from .snakemake_runs import snakemake_command, snakemake_env

TARGET = "results/mamba/seed0/train_summary.json"


def long_tiny_config(path: Path) -> Path:
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["ablations"] = {"mamba": config["ablations"]["mamba"]}
    config["report"] = {"baseline": "mamba"}
    config["training"].update(epochs=8, steps_per_epoch=3, data_workers=0)
    path.write_text(yaml.safe_dump(config))
    return path


def start(work: Path, config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        snakemake_command(work, "--cores", "1", "--replace-workflow-config", TARGET,
                          config=config),
        cwd=work, env=snakemake_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def epoch_lines(log: Path) -> list[dict]:
    if not log.exists():
        return []
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [line for line in lines if line.get("kind") == "epoch"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_snakemake_checkpoints_training_and_a_plain_rerun_resumes(tmp_path, signum):
    config = long_tiny_config(tmp_path / "long.yaml")
    run = tmp_path / "results" / "mamba" / "seed0"
    live_log = run / "checkpoint" / "train_log.jsonl"
    first = start(tmp_path, config)
    deadline = time.monotonic() + 600
    while not epoch_lines(live_log) and time.monotonic() < deadline:
        assert first.poll() is None, first.stdout.read()
        time.sleep(0.5)
    assert epoch_lines(live_log), "training never finished an epoch"
    first.send_signal(signum)
    out, _ = first.communicate(timeout=300)
    assert first.returncode != 0, out
    assert (run / "checkpoint" / "last.pt").exists()
    assert not (run / "model.pt").exists()
    assert len(epoch_lines(live_log)) < 8, "the training ran to its end"

    second = start(tmp_path, config)
    out, _ = second.communicate(timeout=900)
    assert second.returncode == 0, out[-4000:]
    summary = json.loads((tmp_path / TARGET).read_text())
    assert summary["resumed"] >= 1
    assert summary["epochs"] == 8
