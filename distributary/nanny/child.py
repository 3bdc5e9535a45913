"""What runs in a nanny's worker process: the entry point :func:`_run_worker`, which
serves a Worker until it closes, or until the nanny's process is gone."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import dask.config

from distributary.protocol.errors import error_message
from distributary.utils.process import exit_process

logger = logging.getLogger("distributary.nanny")

_PARENT_POLL = 0.5  # seconds between checks, in the child, that the nanny is alive


def _logging_setup(silence_logs: int | None) -> tuple[int, list[logging.Formatter | None]]:
    """distributary's log level in this process (or ``silence_logs``) and the formatters
    of its handlers that write to stderr, for a worker process to log the same way."""
    log = logging.getLogger("distributary")
    formatters = [
        handler.formatter
        for handler in log.handlers
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr
    ]
    return silence_logs or log.level, formatters


def _run_worker(
    conn: Connection,
    parent_pid: int,
    worker_class: type | None,
    worker_kwargs: dict,
    config: dict,
    logging_setup: tuple[int, list[logging.Formatter | None]],
) -> None:
    """Entry point of a worker process: run a Worker until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the nanny's process
    dask.config.update(dask.config.config, config)
    level, formatters = logging_setup
    log = logging.getLogger("distributary")
    log.setLevel(level)
    for formatter in formatters:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        log.addHandler(handler)
    if worker_class is None:
        from distributary.worker.server import Worker

        worker_class = Worker
    served = asyncio.run(_serve_worker(conn, parent_pid, worker_class, worker_kwargs))
    # Tasks still running in the worker's threads must not keep a closed worker alive.
    exit_process(0 if served else 1, grace=0.1, force=True)


async def _serve_worker(
    conn: Connection, parent_pid: int, worker_class: type, worker_kwargs: dict
) -> bool:
    try:
        worker = await worker_class(**worker_kwargs)
    except Exception as exc:
        conn.send(error_message(exc))
        conn.close()
        return False
    conn.send({"status": "OK", "address": worker.address})
    conn.close()
    _watch_parent(parent_pid, worker, asyncio.get_running_loop())
    await worker.finished()
    return True


def _watch_parent(parent_pid: int, worker: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Close the worker, then exit, as soon as the nanny's process is gone."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL)
        logger.warning("The nanny (pid %d) is gone; closing worker %s", parent_pid, worker)
        try:
            asyncio.run_coroutine_threadsafe(worker.close(nanny=False), loop).result(timeout=3)
        except Exception:
            pass
        os._exit(1)

    threading.Thread(target=watch, name="distributary-nanny-watch", daemon=True).start()
