"""Worker processes die with the process that started them, SIGKILL included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import ROOT

POOLS = {
    "data preparation": (
        "from mbsnet.progress import parallel_map\n"
        "parallel_map(time.sleep, [60] * 4, workers=2, desc='sleeping')\n"),
    "scoring": (
        "from mbsnet.metrics.score import _score_parallel\n"
        "from tests.workers_sleep import sleep_task\n"
        "list(_score_parallel([(None, None)] * 4, 2, 16000, sleep_task))\n"),
}


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(child) for child in text)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("pool", sorted(POOLS))
def test_workers_die_when_their_parent_is_killed(pool):
    code = "import time\nif __name__ == '__main__':\n" + "".join(
        f"    {line}\n" for line in POOLS[pool].splitlines())
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while len(workers := children(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(workers) >= 2, "the pool did not start"
        time.sleep(1.0)  # let the workers finish starting (their initializer runs first)
        workers = children(parent.pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if alive(w)]
    finally:
        if parent.poll() is None:
            parent.kill()
