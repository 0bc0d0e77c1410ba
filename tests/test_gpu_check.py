"""scripts/gpu_check.py, the GPU owner's check, run on the CPU with a tiny model: its logic
(corpus, trainings, summary table, scan comparison, JSON) must work before anyone has a GPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mbsnet.models.scan import scan_implementation

from .helpers import ROOT, TINY_CONFIG


@pytest.mark.slow
def test_gpu_check_runs_its_whole_logic_on_the_cpu(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu",
         "--config", str(TINY_CONFIG), "--ablations", "mamba",
         "--steps", "2", "--batch-size", "2", "--crop-seconds", "0.5", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    rows = report["training"]
    assert [(r["ablation"], r["precision"]) for r in rows] == [("mamba", "fp32"),
                                                               ("mamba", "bf16")]
    for row in rows:
        assert row["ok"]
        assert row["steps"] == 2
        assert row["scan"] == scan_implementation(torch.device("cpu"))
        assert row["device"] == "cpu"
        assert row["precision_ran"] == "fp32"
    assert report["concurrent"] == {"skipped": "fewer than two GPUs visible"}
    compared = {(r["mode"], r["scan"]): r for r in report["scan_exactness"]}
    for mode in ("exact", "as_coded"):
        for scan in ("parallel", "native", "chunked"):
            assert compared[mode, scan]["ok"], compared[mode, scan]
        assert "error" in compared[mode, "mamba_ssm"]  # no CUDA here
    assert "mamba" in result.stdout
    assert "0 failed check(s)" in result.stdout


def test_bad_ablation_name_is_a_usage_error(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--ablations", "nope",
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--ablations: nope not in" in result.stderr
