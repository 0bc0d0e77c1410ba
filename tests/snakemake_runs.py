"""Running the project's Snakefile from the tests, and reading what a dry run plans."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import yaml

from .helpers import BIN, ROOT


def snakemake_env(*first_on_path: Path) -> dict[str, str]:
    """This process's environment with ``first_on_path`` and then the venv's scripts at the
    front of PATH: the jobs run `mbsnet` (and `torchrun`) by name."""
    return dict(os.environ, PATH=os.pathsep.join([*map(str, first_on_path), str(BIN),
                                                  os.environ["PATH"]]))


def snakemake_command(workdir: Path, *args: str, config: Path | None = None) -> list[str]:
    """The Snakefile run in ``workdir`` (so results/ lands there), with ``config``."""
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir)]
    if config is not None:
        cmd += ["--configfile", str(config)]
    return cmd + list(args)


def snakemake(workdir: Path, *args: str, config: Path | None = None, timeout: int = 900,
              env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run :func:`snakemake_command` to the end in ``cwd`` (default: ``workdir``; relative
    paths in ``args`` are read from there), capturing its output."""
    return subprocess.run(snakemake_command(workdir, *args, config=config), capture_output=True,
                          text=True, env=env or snakemake_env(), timeout=timeout,
                          cwd=cwd or workdir)


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def planned_jobs(stdout: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    table = stdout.split("Job stats:")[-1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)
            if m.group(1) != "total"}


def planned_rules(stdout: str) -> list[dict]:
    """Each job of a dry run (with -p): rule, wildcards, threads, resources, shell command."""
    jobs = []
    for block in re.split(r"\n\s*\n", stdout):
        rule = re.search(r"^(?:local)?rule (\w+):$", block, re.M)
        if not rule:
            continue
        fields = dict(re.findall(r"^\s+(\w+): (.*)$", block, re.M))
        shell = re.search(r"^Shell command: (.*)$", block, re.M)

        def pairs(text: str) -> dict[str, str]:
            return dict(item.split("=", 1) for item in text.split(", ")) if text else {}

        jobs.append({"rule": rule.group(1), "wildcards": pairs(fields.get("wildcards", "")),
                     "threads": int(fields.get("threads", 1)),
                     "resources": pairs(fields.get("resources", "")),
                     "shell": shell.group(1) if shell else ""})
    return jobs
