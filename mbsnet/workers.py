"""Worker processes that never outlive the process they serve.

A training, an evaluation or a data preparation killed outright (SIGKILL, the OOM killer, a
scheduler's hard limit) cannot stop its pools; a worker would otherwise wait forever on its
task queue, and keep its fork server and multiprocessing's resource tracker alive with it.
Each worker therefore watches the process it serves and exits when that one ends. No torch
here: scoring and data workers import this module.
"""

from __future__ import annotations

import os
import select
import threading
import time

POLL_SECONDS = 1.0
"""How often the fallback without pidfds looks for the watched process."""


def exit_with(pid: int) -> None:
    """Make this process exit as soon as process ``pid`` ends.

    A daemon thread waits on a pidfd of ``pid`` (Linux >= 5.3), which becomes readable
    when that process ends, or else checks for it every :data:`POLL_SECONDS`.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # already gone
        os._exit(1)
    except (AttributeError, OSError):  # no pidfds here
        threading.Thread(target=_poll_then_exit, args=(pid,), daemon=True).start()
        return
    threading.Thread(target=_wait_then_exit, args=(fd,), daemon=True).start()


def die_with_parent(*_: object) -> None:
    """:func:`exit_with` the parent process; usable as a pool ``initializer`` or a
    DataLoader ``worker_init_fn`` (arguments ignored)."""
    exit_with(os.getppid())


def _wait_then_exit(fd: int) -> None:
    select.select([fd], [], [])
    os._exit(1)


def _poll_then_exit(pid: int) -> None:
    while True:
        time.sleep(POLL_SECONDS)
        try:
            os.kill(pid, 0)
        except OSError:  # gone (or the number reused by another user's process)
            os._exit(1)
