"""envs/mbsnet.yaml, the environment of `snakemake --sdm conda`: it lists pyproject.toml's
dependencies and nothing else, and the rules then run the package from the workflow's
directory. Conda itself cannot be installed here: the slow test builds a fresh venv from the
env file's pip list instead and runs a rule's command from it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mbsnet import layout
from mbsnet.config import load_config

from .helpers import ROOT, TINY_CONFIG
from .snakemake_runs import planned_rules, snakemake, snakemake_env, write_config

ENV_FILE = ROOT / "envs" / "mbsnet.yaml"
#: how a rule starts mbsnet under --sdm conda (common.smk's mbsnet_command)
CONDA_MBSNET = f"env PYTHONPATH={ROOT} python -m mbsnet"


def env_pip_list(env: dict) -> list[str]:
    """The requirements under the env file's `pip:` entry."""
    (pip,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    return pip


def pyproject_dependencies() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def drift(ours: list[str], theirs: list[str]) -> tuple[list[str], list[str]]:
    """Requirements only in ``ours`` and only in ``theirs``, compared as requirements
    (name case and separators, specifier order and spaces do not count)."""
    def normal(lines: list[str]) -> set[str]:
        parsed = [Requirement(line) for line in lines]
        return {f"{canonicalize_name(r.name)}{sorted(r.extras)}{r.specifier}{r.marker or ''}"
                for r in parsed}

    a, b = normal(ours), normal(theirs)
    return sorted(a - b), sorted(b - a)


def test_env_file_is_python_3_11_from_conda_forge_and_the_dependencies_by_pip():
    env = yaml.safe_load(ENV_FILE.read_text())
    assert env["channels"] == ["conda-forge"]
    assert [d for d in env["dependencies"] if not isinstance(d, dict)] == ["python=3.11", "pip"]
    pip = env_pip_list(env)
    # no editable install or path: Snakemake creates the env from a copy of this file
    assert not [line for line in pip if line.startswith("-") or "/" in line or "." == line[0]]
    assert [Requirement(line).name for line in pip]        # each line a plain requirement


def test_env_file_lists_exactly_pyprojects_dependencies():
    only_env, only_pyproject = drift(env_pip_list(yaml.safe_load(ENV_FILE.read_text())),
                                     pyproject_dependencies())
    assert (only_env, only_pyproject) == ([], []), "envs/mbsnet.yaml and pyproject.toml differ"


def test_drift_is_seen_both_ways():
    dependencies = pyproject_dependencies()
    assert drift(dependencies + ["rich>=13"], dependencies) == (["rich[]>=13"], [])
    repinned = [d.replace("torch==2.13.0", "torch==2.12.0") for d in dependencies]
    assert drift(dependencies, repinned) == (["torch[]==2.13.0"], ["torch[]==2.12.0"])
    assert drift(["PyYAML >= 6.0"], ["pyyaml>=6.0"]) == ([], [])


# Even a dry run under --sdm conda asks conda for its platform, version and channel
# priority (to name the environment it would create). Conda cannot be installed here: this
# stand-in answers those three questions and refuses anything else.
FAKE_CONDA = """#!/bin/sh
case "$*" in
  "info --json") echo '{"platform": "linux-64", "conda_prefix": "/nonexistent/conda"}';;
  "--version") echo "conda 24.7.1";;
  "config --get channel_priority --json") echo '{"get": {"channel_priority": "strict"}}';;
  *) echo "not conda: $*" >&2; exit 1;;
esac
"""


def dry_run(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    fake = workdir / "fake-conda"
    fake.mkdir(exist_ok=True)
    (fake / "conda").write_text(FAKE_CONDA)
    (fake / "conda").chmod(0o755)
    return snakemake(workdir, "-n", "-p", "--cores", "4", *args, config=config, timeout=300,
                     env=snakemake_env(fake))


def conda_plan(tmp_path: Path, config: dict) -> list[dict]:
    """Every job of the config's dry run under --sdm conda, with its shell command."""
    path = write_config(tmp_path / "config.yaml", config)
    result = dry_run(tmp_path, path, "--sdm", "conda")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "will be created" in result.stdout + result.stderr     # it did plan with conda
    return planned_rules(result.stdout)


def test_under_conda_every_rule_runs_the_package_from_the_workflow_directory(tmp_path):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    jobs = [job for job in conda_plan(tmp_path, config) if job["rule"] != "all"]
    assert {job["rule"] for job in jobs} == set(layout.RULE_LOGS)
    for job in jobs:
        assert job["shell"].startswith(f"{CONDA_MBSNET} {job['rule'].split('_')[0]} "), job
    assert not [job for job in jobs if "mbsnet " in job["shell"].replace(CONDA_MBSNET, "")]

    plain = dry_run(tmp_path, tmp_path / "config.yaml")      # without --sdm conda: as ever
    assert plain.returncode == 0, plain.stderr[-3000:]
    for job in planned_rules(plain.stdout):
        if job["rule"] != "all":
            assert job["shell"].startswith(f"mbsnet {job['rule'].split('_')[0]} "), job


def test_under_conda_the_launchers_start_the_package_too(tmp_path):
    """torchrun (and srun) start the first word after them: env, which sets PYTHONPATH."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["training"].update(batch_size=4, pesq_workers=1, data_workers=0)
    config["ablations"]["mamba"]["training"] = {"devices": 2}
    (train,) = [job for job in conda_plan(tmp_path, config)
                if job["rule"] == "train" and job["wildcards"]["ablation"] == "mamba"]
    assert train["shell"].startswith(
        f"torchrun --standalone --nproc-per-node 2 --no-python {CONDA_MBSNET} train ")


@pytest.mark.slow
def test_env_files_pip_list_runs_a_rules_command_in_a_fresh_venv(tmp_path):
    """The env file's dependencies, installed alone (within constraints.txt) in a new venv,
    run the prepare_data rule's command as Snakemake renders it under --sdm conda, from a
    working directory outside the repository; the package comes from PYTHONPATH only."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = env_pip_list(yaml.safe_load(ENV_FILE.read_text()))
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                              "-c", str(ROOT / "constraints.txt"), *pip],
                             capture_output=True, text=True, timeout=3000)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    work = tmp_path / "work"
    work.mkdir()
    config = yaml.safe_load(TINY_CONFIG.read_text())
    (prepare,) = [job for job in conda_plan(work, config) if job["rule"] == "prepare_data"]
    # what Snakemake's onstart writes before any job runs, and the log's folder
    resolved = layout.path(work / layout.RESULTS, layout.RESOLVED_CONFIG)
    resolved.parent.mkdir(parents=True)
    resolved.write_text(json.dumps(load_config(work / "config.yaml"), indent=2))
    layout.path(work / layout.RESULTS, layout.log("prepare_data")).parent.mkdir(parents=True)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"   # as an activated environment

    alone = subprocess.run(["python", "-m", "mbsnet", "--version"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=60)
    assert alone.returncode != 0
    assert "No module named mbsnet" in alone.stderr
    ran = subprocess.run(["bash", "-c", prepare["shell"]], cwd=work, env=env,
                         capture_output=True, text=True, timeout=900)
    log = layout.path(work / layout.RESULTS, layout.log("prepare_data")).read_text()
    assert ran.returncode == 0, log[-3000:]
    manifest = layout.path(work / layout.RESULTS, layout.MANIFEST).read_text().splitlines()
    assert len(manifest) == 1 + 12 + 4                          # header, train, test
    params = subprocess.run(["bash", "-c", f"{CONDA_MBSNET} params --config config.yaml"],
                            cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert params.returncode == 0, params.stderr[-3000:]
    assert "bsrnn" in params.stdout
    assert "mamba" in params.stdout
    assert shutil.which("mbsnet", path=str(venv / "bin")) is None   # not installed there
