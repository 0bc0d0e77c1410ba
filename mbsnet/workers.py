"""Worker processes that never outlive the process that started them.

A training, an evaluation or a data preparation killed with SIGKILL cannot clean up its
pools; on Linux each worker therefore asks the kernel for SIGKILL when its parent dies
(``prctl(PR_SET_PDEATHSIG)``). Elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(*_: object) -> None:
    """Make the calling process receive SIGKILL when its parent process exits.

    Usable as a pool ``initializer`` or a DataLoader ``worker_init_fn`` (arguments ignored).
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # not fatal: the worker merely loses the guarantee
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)
