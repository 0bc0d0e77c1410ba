"""The Snakemake workflow: dry runs, lint, config errors, and the tiny pipeline end to end."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str, config: Path | None = None, timeout: int = 900):
    """Run the project's Snakefile in `workdir` (so results/ lands there)."""
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir)]
    if config is not None:
        cmd += ["--configfile", str(config)]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=workdir)


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def planned_jobs(stdout: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    table = stdout.split("Job stats:")[-1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)
            if m.group(1) != "total"}


def test_dry_run_default_config_plans_every_ablation(tmp_path):
    result = snakemake(tmp_path, "-n", config=ROOT / "config.yaml")
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result.stdout)
    assert jobs == {"prepare_data": 1, "profile": 5, "train": 5, "evaluate": 5,
                    "evaluate_noisy": 1, "report": 1, "all": 1}


def test_dry_run_voicebank_config(tmp_path):
    fake_voicebank = pytest.importorskip("tests.fake_voicebank")
    root = tmp_path / "vbd"
    fake_voicebank.make_fake_voicebank(root, layout="official")
    config = yaml.safe_load(TINY.read_text())
    config["data"] = {"source": "voicebank", "root": str(root), "valid_speakers": 1}
    path = write_config(tmp_path / "vb.yaml", config)
    result = snakemake(tmp_path, "-n", config=path)
    assert result.returncode == 0, result.stderr
    assert planned_jobs(result.stdout)["train"] == 2


def test_lint_is_clean():
    result = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c["training"].update(epochz=3), "epochz"),
        (lambda c: c["ablations"]["mamba"]["model"]["stages"][0]["blocks"][0].update(type="gru"),
         "ablations.mamba.model.stages.0.blocks.0.type"),
        (lambda c: c["ablations"]["bsrnn"]["model"].pop("decoder"), "decoder"),
        (lambda c: c["data"].update(source="libri"), "data.source"),
    ],
    ids=["typo", "unknown-block-type", "missing-key", "unknown-source"],
)
def test_bad_config_fails_before_any_job(tmp_path, edit, key):
    config = yaml.safe_load(TINY.read_text())
    edit(config)
    result = snakemake(tmp_path, "--cores", "1", config=write_config(tmp_path / "bad.yaml", config))
    assert result.returncode != 0
    assert key in result.stdout + result.stderr
    assert not (tmp_path / "results" / "data").exists()


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    config_path = shutil.copy(TINY, work / "tiny.yaml")
    result = snakemake(work, "--cores", "2", "report", config=config_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    html = (work / "results" / "report.html").read_text()
    for name in ("bsrnn", "mamba", "noisy"):
        assert name in html
    summary = (work / "results" / "summary.tsv").read_text()
    assert "bsrnn" in summary and "mamba" in summary
    for rule_log in ("prepare_data.log", "report.log"):
        assert (work / "results" / "logs" / rule_log).exists()

    again = snakemake(work, "--cores", "2", "report", config=config_path)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr

    # Changing one ablation's settings reruns that ablation and the report only.
    config = yaml.safe_load(TINY.read_text())
    config["training"]["lr"] = 1e-3  # unchanged global value: no effect
    config["ablations"]["mamba"]["model"]["channels"] = 12
    changed = write_config(work / "tiny.yaml", config)
    plan = snakemake(work, "-n", "report", config=changed)
    assert plan.returncode == 0, plan.stderr
    assert planned_jobs(plan.stdout) == {"profile": 1, "train": 1, "evaluate": 1, "report": 1}
