"""Where and from what a report was made: date, git state, config hash, machine, versions."""

from __future__ import annotations

import datetime as dt
import platform
import socket
import subprocess
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from ..config import config_hash

#: distributions whose versions the report records
PACKAGES = ("mbsnet", "torch", "snakemake", "pesq", "pystoi", "numpy", "scipy")


def package_version(name: str) -> str:
    """The installed distribution's version; mbsnet's own when it runs uninstalled (from the
    workflow's folder under `--sdm conda`)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name == "mbsnet":
            from .. import __version__

            return __version__
        return "not installed"


def git_state(directory: str | Path) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the git checkout holding ``directory`` (tracked files only),
    or ``{"commit": None, "why": ...}`` when there is none."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except FileNotFoundError:
        return {"commit": None, "why": "git is not installed"}
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, NotADirectoryError):
        return {"commit": None, "why": f"{directory} is not in a git checkout"}
    return {"commit": commit, "dirty": dirty}


def provenance(config: Mapping[str, Any], project_dir: str | Path,
               devices: Iterable[str] = ()) -> dict[str, Any]:
    """Everything the report's provenance section shows.

    ``project_dir`` is where the config lives (its git state is recorded); ``devices`` are
    the devices the runs report in train_summary.json and profile.json.
    """
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "git": git_state(project_dir),
        "config_hash": config_hash(config),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "devices": sorted(set(devices)),
        "versions": {"Python": platform.python_version(),
                     **{name: package_version(name) for name in PACKAGES}},
        "config_yaml": yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None),
    }
