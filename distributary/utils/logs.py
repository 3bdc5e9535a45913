"""The recent log records of a server, kept in memory for ``get_scheduler_logs`` and
``get_worker_logs``.

A :class:`RecentLogs` handler sits on a server's logger (``distributary.scheduler``,
``distributary.worker``, ``distributary.nanny``) while the server runs and keeps the
last ``distributed.admin.log-length`` records it emits, formatted with
``distributed.admin.log-format``.  As with dask.distributed, the servers of one kind
in one process share their logger, and so their records; which records are emitted
at all is up to the logger's level, as for any other handler.

A handler on a logger stops Python from printing warnings to stderr by itself when
nothing else is set up (``logging.lastResort``): a record that no other handler would
see is passed on to it here, so that keeping logs changes nothing of what is printed.
"""

from __future__ import annotations

import logging
from collections import deque

import dask.config

_PASSED_ON = "_distributary_last_resort"  # a record already given to logging.lastResort


class RecentLogs(logging.Handler):
    """Keeps the last ``n`` records as ``(level name, formatted message)``."""

    def __init__(self, n: int | None = None):
        super().__init__()
        if n is None:
            n = dask.config.get("distributed.admin.log-length", default=10_000)
        self.records: deque[tuple[str, str]] = deque(maxlen=n)
        self.setFormatter(logging.Formatter(dask.config.get("distributed.admin.log-format")))
        self._loggers: list[logging.Logger] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append((record.levelname, self.format(record)))
        except Exception:
            self.handleError(record)
        _pass_to_last_resort(record)

    def recent(self, n: int | None = None) -> list[tuple[str, str]]:
        """The records kept, newest first: the ``n`` newest if ``n`` is given."""
        if n is not None and n < 0:
            raise ValueError(f"n must be None or at least 0, not {n}")
        records = reversed(self.records)
        return list(records) if n is None else [r for r, _ in zip(records, range(n))]

    def attach(self, name: str) -> None:
        """Keep what the logger ``name`` emits from now on."""
        logger = logging.getLogger(name)
        logger.addHandler(self)
        self._loggers.append(logger)

    def detach(self) -> None:
        """Stop keeping records (those kept stay)."""
        for logger in self._loggers:
            logger.removeHandler(self)
        self._loggers.clear()


def _pass_to_last_resort(record: logging.LogRecord) -> None:
    """Print ``record`` as Python would, had no RecentLogs handler been there."""
    last_resort = logging.lastResort
    if last_resort is None or record.levelno < last_resort.level:
        return
    if getattr(record, _PASSED_ON, False):
        return
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:
        if any(not isinstance(handler, RecentLogs) for handler in logger.handlers):
            return  # another handler sees it: Python does not use the last resort
        logger = logger.parent if logger.propagate else None
    setattr(record, _PASSED_ON, True)
    last_resort.handle(record)
