"""One CUDA device per job (mbsnet.gpu_claim, mbsnet.device) without a GPU: the device
count is simulated with MBSNET_SIMULATED_GPUS, and claims run in real processes."""

from __future__ import annotations

import fcntl
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from mbsnet import gpu_claim
from mbsnet.device import describe, select_device
from mbsnet.errors import ConfigError

SCHEDULER_VARS = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS")

# Claims a device, reports it, then holds it until killed; with a "fork" argument it first
# forks a child that outlives it (as a data-loader or PESQ worker might).
CLAIMER = """
import os, sys, time
from mbsnet.gpu_claim import claim_device
claim = claim_device(poll_seconds=0.05, log=lambda line: print(line, flush=True))
print(f"device {claim.index} {claim.physical}", flush=True)
if sys.argv[1:] == ["fork"]:
    child = os.fork()
    if child == 0:  # after the fork handlers ran (the device's lock closed here)
        print("child started", flush=True)
        time.sleep(600)
        os._exit(0)
    print(f"child {child}", flush=True)
time.sleep(600)
"""


class Claimer:
    """A process running CLAIMER, its output lines read in the background."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", CLAIMER, *args], env=env,
                                     stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def next_line(self, timeout: float = 120) -> str:
        return self.lines.get(timeout=timeout)

    def claimed(self) -> tuple[int, str]:
        line = self.next_line()
        assert line.startswith("device "), line
        index, physical = line.split()[1:]
        return int(index), physical

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def lock_dir(tmp_path, monkeypatch) -> Path:
    """A private lock folder, no scheduler variables, and no claim left behind."""
    for var in SCHEDULER_VARS:
        monkeypatch.delenv(var, raising=False)
    directory = tmp_path / "locks"
    monkeypatch.setenv(gpu_claim.LOCK_DIR_ENV, str(directory))
    gpu_claim.release()
    yield directory
    gpu_claim.release()


@pytest.fixture
def claimers():
    started: list[Claimer] = []

    def start(gpus: int, *args: str, **env: str) -> Claimer:
        claimer = Claimer(dict(os.environ, MBSNET_SIMULATED_GPUS=str(gpus), **env), *args)
        started.append(claimer)
        return claimer

    yield start
    for claimer in started:
        claimer.kill()


def hold(path: Path) -> int:
    """Take the lock of ``path`` as another job would; returns the descriptor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def is_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_concurrent_jobs_get_distinct_devices_and_a_killed_jobs_device_is_freed(
        lock_dir, claimers):
    first = [claimers(3) for _ in range(3)]
    claims = [c.claimed() for c in first]
    assert sorted(claims) == [(0, "0"), (1, "1"), (2, "2")]
    assert sorted(p.name for p in lock_dir.iterdir()) == ["gpu-0.lock", "gpu-1.lock",
                                                         "gpu-2.lock"]

    fourth = claimers(3)
    assert fourth.next_line().startswith("waiting for a free GPU (3 busy")
    holder = first[[index for index, _ in claims].index(1)]
    holder.kill()                                   # SIGKILL: no chance to clean up
    assert fourth.next_line().startswith("claimed GPU 1 after waiting")
    assert fourth.claimed() == (1, "1")


def test_a_forked_child_does_not_keep_the_device(lock_dir, claimers):
    parent = claimers(1, "fork")
    assert parent.claimed() == (0, "0")
    # both lines, in either order: the child may run before or after its parent goes on
    lines = sorted(parent.next_line() for _ in range(2))
    assert lines[1] == "child started", lines
    child = int(lines[0].split()[1])
    try:
        assert not is_free(lock_dir / "gpu-0.lock")
        parent.kill()
        assert is_free(lock_dir / "gpu-0.lock")    # the child still runs
        os.kill(child, 0)
    finally:
        os.kill(child, signal.SIGKILL)


def test_claims_name_the_physical_devices_of_cuda_visible_devices(lock_dir, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    monkeypatch.setenv(gpu_claim.SIMULATED_ENV, "2")
    other_job = hold(lock_dir / "gpu-2.lock")      # e.g. a job that sees every GPU
    try:
        claim = gpu_claim.claim_device(poll_seconds=0.01)
        assert claim == gpu_claim.Claim(1, "5", lock_dir / "gpu-5.lock")
        assert gpu_claim.claim_device() is claim    # held for the process's life
        assert not is_free(lock_dir / "gpu-5.lock")
        gpu_claim.release()
        assert is_free(lock_dir / "gpu-5.lock")
    finally:
        os.close(other_job)


def test_a_scheduler_assigned_device_is_used_without_a_lock(lock_dir, monkeypatch):
    # SLURM with device cgroups: the job sees its GPU as device 0; node-wide it is GPU 3.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_JOB_GPUS", "3")
    monkeypatch.setenv(gpu_claim.SIMULATED_ENV, "1")
    held = [hold(lock_dir / "gpu-0.lock"), hold(lock_dir / "gpu-3.lock")]   # do not matter
    try:
        assert gpu_claim.claim_device(poll_seconds=0.01) == gpu_claim.Claim(0, "3", None)
        assert gpu_claim.physical_id(0) == "3"
    finally:
        for fd in held:
            os.close(fd)


def test_several_scheduler_assigned_devices_are_shared_out_within_the_allocation(
        lock_dir, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_STEP_GPUS", "4,6")
    monkeypatch.setenv(gpu_claim.SIMULATED_ENV, "2")
    held = hold(lock_dir / "slurm-job-7" / "gpu-4.lock")    # another job step of job 7
    try:
        claim = gpu_claim.claim_device(poll_seconds=0.01)
        assert claim == gpu_claim.Claim(1, "6", lock_dir / "slurm-job-7" / "gpu-6.lock")
    finally:
        os.close(held)


def test_select_device_claims_a_free_cuda_device_and_describe_names_it(lock_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setenv(gpu_claim.SIMULATED_ENV, "2")
    assert select_device("cpu") == torch.device("cpu")
    assert not lock_dir.exists()
    held = hold(lock_dir / "gpu-0.lock")
    try:
        device = select_device("auto")
        assert device == torch.device("cuda", 1)
        assert current == [device]       # the default device for code that names none
        assert select_device("cuda") == device
        assert describe(device) == "cuda:1 (Fake GPU)"
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
        assert describe(device) == "cuda:1 = GPU 5 (Fake GPU)"
        assert describe(torch.device("cpu")) == "cpu"
    finally:
        os.close(held)


def test_no_visible_cuda_device(lock_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match="training.device: 'cuda' requested"):
        select_device("cuda")
    monkeypatch.setenv(gpu_claim.SIMULATED_ENV, "0")
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        gpu_claim.claim_device()


def test_bad_settings_are_config_errors(lock_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(gpu_claim.SIMULATED_ENV, "two")
    with pytest.raises(ConfigError, match="MBSNET_SIMULATED_GPUS: expected a device count"):
        gpu_claim.claim_device()
    monkeypatch.setenv(gpu_claim.SIMULATED_ENV, "1")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(gpu_claim.LOCK_DIR_ENV, str(tmp_path / "file" / "locks"))
    with pytest.raises(ConfigError, match="set MBSNET_GPU_LOCK_DIR to a folder you can write"):
        gpu_claim.claim_device()


def test_default_lock_folder_is_per_user(monkeypatch):
    monkeypatch.delenv(gpu_claim.LOCK_DIR_ENV, raising=False)
    for var in SCHEDULER_VARS:
        monkeypatch.delenv(var, raising=False)
    assert gpu_claim.lock_dir() == Path(f"/tmp/mbsnet-gpu-locks-{os.getuid()}")
