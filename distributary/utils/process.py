"""Processes: how many cores this one may use, and leaving a process that runs a worker."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import NoReturn

logger = logging.getLogger("distributary")


def exit_process(code: int, grace: float = 1.0, force: bool = False) -> NoReturn:
    """Exit with ``code``, even if a task thread of a closed worker still runs.

    Python waits for thread-pool threads at exit, which would make a worker that was
    told to stop hang until its running tasks return: they get ``grace`` seconds.
    With ``force`` the interpreter's own clean-up is skipped (a worker process whose
    worker has closed has nothing left to clean up).
    """
    others = [
        thread
        for thread in threading.enumerate()
        if thread is not threading.current_thread() and not thread.daemon
    ]
    deadline = time.monotonic() + grace
    for thread in others:
        thread.join(max(deadline - time.monotonic(), 0))
    running = [thread for thread in others if thread.is_alive()]
    if running or force:
        if running:
            logger.info("Exiting while tasks still run in %d thread(s)", len(running))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def cpu_count() -> int:
    """The number of cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
