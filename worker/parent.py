"""Die with the parent process: a training process with its worker, an embedded worker with serve.

A module of its own, importing nothing of the project, so that the Celery app can use it at
start-up without importing the task modules (which import the Celery app).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from contextlib import suppress

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int, parent_pid: int, *, hard_exit_after_s: float | None = None) -> None:
    """Linux: the kernel sends `sig` to this process when its parent goes; exit at once if it already went.

    Also a thread that watches the parent's pid (for platforms without the signal), sends `sig`
    when the parent is gone and, `hard_exit_after_s` later, kills this process group if this
    process still lives (a warm shutdown that hangs).
    """
    if sys.platform == "linux":
        with suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        log.warning("parent process %s is gone; stopping", parent_pid)
        os.kill(os.getpid(), sig)
        if hard_exit_after_s is not None:
            time.sleep(hard_exit_after_s)
            log.error("still alive %.0f s after the parent went; killing this process group", hard_exit_after_s)
            with suppress(OSError):
                os.killpg(os.getpgrp(), signal.SIGKILL)
            os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
