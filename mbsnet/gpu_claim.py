"""One CUDA device per job: claim a free device for the life of the process.

A scheduler that already chose the device (SLURM sets ``CUDA_VISIBLE_DEVICES`` together
with ``SLURM_JOB_ID`` and ``SLURM_STEP_GPUS``/``SLURM_JOB_GPUS``) is obeyed: a single
device is used as it is, several are shared out among the allocation's jobs by locks in a
folder of its own. Otherwise each visible device has a lock file in
:func:`lock_dir`, and the process takes an exclusive ``flock`` on the first free one and
keeps it until it exits. The kernel drops the lock when the process dies (``kill -9``
included), so a crashed job never leaves a device taken. When every device is held,
the claim waits for one to be freed. A data-parallel training on a workstation claims its
N devices at once, all or nothing (:func:`claim_devices`).

Devices are named by their physical id (an entry of ``CUDA_VISIBLE_DEVICES``, or the
index when it is unset; under SLURM its node-wide id), so jobs that see different subsets
of the machine still agree on which lock belongs to which device. No torch import here:
the device count comes from :func:`visible_count`, which ``MBSNET_SIMULATED_GPUS``
overrides for tests.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .console import TO_STDERR
from .errors import ConfigError

LOCK_DIR_ENV = "MBSNET_GPU_LOCK_DIR"
SIMULATED_ENV = "MBSNET_SIMULATED_GPUS"
SCHEDULER_GPU_VARS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")
POLL_SECONDS = 10.0


@dataclass(frozen=True)
class Claim:
    """The device this process uses: ``cuda:index``, physically ``physical``."""

    index: int
    physical: str
    lock: Path | None      # None: assigned by the scheduler, no lock taken


_claims: list[Claim] = []
_fds: list[int] = []


def visible_count() -> int:
    """CUDA devices this process can see (``MBSNET_SIMULATED_GPUS`` when set)."""
    simulated = os.environ.get(SIMULATED_ENV)
    if simulated is not None:
        if not simulated.isdigit():
            raise ConfigError(f"{SIMULATED_ENV}: expected a device count >= 0, got {simulated!r}")
        return int(simulated)
    import torch

    return torch.cuda.device_count()


def scheduler_assigned() -> bool:
    """Whether a scheduler (SLURM) chose this job's devices."""
    env = os.environ
    return ("CUDA_VISIBLE_DEVICES" in env and "SLURM_JOB_ID" in env
            and any(env.get(var) for var in SCHEDULER_GPU_VARS))


def _listed_ids() -> list[str] | None:
    """The physical ids of the visible devices in CUDA index order, as the environment
    lists them: SLURM's node-wide ids, else ``CUDA_VISIBLE_DEVICES`` (None: unset)."""
    listed: str | None
    if scheduler_assigned():
        listed = next(os.environ[var] for var in SCHEDULER_GPU_VARS if os.environ.get(var))
    else:
        listed = os.environ.get("CUDA_VISIBLE_DEVICES")
        if listed is None:
            return None
    return [entry.strip() for entry in listed.split(",") if entry.strip()]


def physical_ids(count: int) -> list[str]:
    """The physical ids of the first ``count`` visible devices, in CUDA index order."""
    listed = _listed_ids()
    return [str(i) for i in range(count)] if listed is None else listed[:count]


def physical_id(index: int) -> str:
    """The physical id of ``cuda:index`` (the index itself when nothing renumbers it)."""
    listed = _listed_ids() or []
    return listed[index] if index < len(listed) else str(index)


def lock_dir() -> Path:
    """Where the per-device lock files live: ``$MBSNET_GPU_LOCK_DIR``, else
    ``/tmp/mbsnet-gpu-locks-<uid>``. Inside a SLURM allocation, one folder per job: there
    the ids are the allocation's, not the machine's."""
    base = Path(os.environ.get(LOCK_DIR_ENV) or f"/tmp/mbsnet-gpu-locks-{os.getuid()}")
    if scheduler_assigned():
        return base / f"slurm-job-{os.environ['SLURM_JOB_ID']}"
    return base


def _lock_file(directory: Path, physical: str) -> Path:
    return directory / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', physical)}.lock"


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive lock on ``path``, or None if it is taken."""
    # Read-only is enough for flock, and lets users share a lock folder.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


logger = logging.getLogger(__name__)


def _stderr(line: str) -> None:
    """Waiting messages go to stderr (the job's log), beside the progress lines."""
    logger.info(line, extra=TO_STDERR)


def claim_device(poll_seconds: float = POLL_SECONDS,
                 log: Callable[[str], None] = _stderr) -> Claim:
    """This process's device, claimed on the first call (waiting while every visible
    device is taken) and the same on every later call."""
    return claim_devices(1, poll_seconds, log)[0]


def claim_devices(count: int, poll_seconds: float = POLL_SECONDS,
                  log: Callable[[str], None] = _stderr) -> list[Claim]:
    """``count`` distinct devices for this process, claimed together on the first call and
    the same on every later call (a data-parallel job on a workstation: one process claims
    for all its ranks, :mod:`mbsnet.train.distributed`).

    All or nothing: while fewer than ``count`` are free the claim holds none and waits, so
    two jobs that each need several devices never hold part of them and wait for the rest
    of each other's.
    """
    global _claims, _fds
    if _claims:
        if len(_claims) != count:
            raise RuntimeError(f"this process already holds {len(_claims)} GPU(s), "
                               f"not {count}")
        return list(_claims)
    ids = physical_ids(visible_count())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not ids:
        raise ConfigError(f"no CUDA device is visible to claim (CUDA_VISIBLE_DEVICES={visible!r})")
    if len(ids) < count:
        raise ConfigError(f"{count} CUDA devices are needed but {len(ids)} are visible "
                          f"(CUDA_VISIBLE_DEVICES={visible!r})")
    if scheduler_assigned() and len(ids) == count:
        _claims = [Claim(index, physical, None) for index, physical in enumerate(ids)]
        return list(_claims)
    held = _lock_when_free(lock_dir(), ids, count, poll_seconds, log)
    _fds, _claims = [fd for fd, _ in held], [claim for _, claim in held]
    return list(_claims)


def _lock_when_free(directory: Path, ids: list[str], count: int, poll_seconds: float,
                    log: Callable[[str], None]) -> list[tuple[int, Claim]]:
    """Locks on ``count`` devices, taken together once that many are free (see
    :func:`claim_devices`)."""
    wanted = "a free GPU" if count == 1 else f"{count} free GPUs"
    waited_since = None
    while True:
        held = _lock_free(directory, ids, count)
        if len(held) == count:
            if waited_since is not None:
                names = ", ".join(claim.physical for _, claim in held)
                log(f"claimed GPU{'s' * (count > 1)} {names} after waiting "
                    f"{time.monotonic() - waited_since:.0f} s")
            return held
        for fd, _ in held:
            os.close(fd)
        if waited_since is None:
            log(f"waiting for {wanted} ({len(ids) - len(held)} busy; locks in {directory})")
            waited_since = time.monotonic()
        time.sleep(poll_seconds)


def _lock_free(directory: Path, ids: list[str], count: int) -> list[tuple[int, Claim]]:
    """Locks on up to ``count`` free devices, in index order, as (descriptor, claim)."""
    held: list[tuple[int, Claim]] = []
    for index, physical in enumerate(ids):
        path = _lock_file(directory, physical)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = _try_lock(path)
        except OSError as exc:
            for taken, _ in held:
                os.close(taken)
            raise ConfigError(f"cannot lock {path} to claim a GPU ({exc.strerror}); set "
                              f"{LOCK_DIR_ENV} to a folder you can write") from exc
        if fd is not None:
            held.append((fd, Claim(index, physical, path)))
            if len(held) == count:
                break
    return held


def release() -> None:
    """Give the claimed devices back before the process ends (tests, long-lived programs)."""
    global _claims, _fds
    for fd in _fds:
        os.close(fd)
    _claims, _fds = [], []


def _close_in_child() -> None:
    # A forked child (a data-loader or PESQ worker) shares the parent's locks; closing its
    # copies keeps the devices tied to the claiming process alone, so they are freed
    # when that process dies even if a stray child lives on.
    global _fds
    for fd in _fds:
        os.close(fd)
    _fds = []


os.register_at_fork(after_in_child=_close_in_child)
