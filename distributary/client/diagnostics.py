"""Client methods of the diagnostics: the task stream and the statistical profile.

Each is a scheduler call (see :mod:`distributary.client.calls`): the scheduler gathers
what its workers recorded, and the client draws the charts (HTML pages that the browser
renders, :mod:`distributary.diagnostics.html`), so that no plotting runs on the
scheduler.  Times are ``time.time()`` values, or durations before now (``"10s"``).
"""

from __future__ import annotations

import time
from numbers import Number
from typing import Any

from dask.utils import parse_timedelta

from distributary.client.calls import SchedulerCall, named_workers
from distributary.diagnostics import html
from distributary.diagnostics import profile as pf
from distributary.protocol import diagnostics as dg

_PLOTS = (False, True, "save")


def timestamp(value: Any, name: str = "start") -> float | None:
    """A bound in time: None, a ``time.time()`` value, or a duration before now (a
    string such as ``"10s"`` or ``"500 ms"``)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return time.time() - parse_timedelta(value)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{name}={value!r} is not a duration such as '10s': {exc}") from None
    if isinstance(value, Number) and not isinstance(value, bool):
        return float(value)  # type: ignore[arg-type]
    raise TypeError(
        f"{name} must be a time.time() value or a duration such as '10s', not {value!r}"
    )


def check_plot(plot: Any) -> Any:
    """``plot`` of a chart: False (None too), True or ``"save"``; ValueError otherwise."""
    if plot is None:
        return False
    if plot not in _PLOTS:
        raise ValueError(f"plot must be True, False or 'save', not {plot!r}")
    return plot


async def get_task_stream(
    call: SchedulerCall,
    start: Any = None,
    stop: Any = None,
    count: int | None = None,
    plot: bool | str = False,
    filename: str = "task-stream.html",
) -> Any:
    """The records of the tasks the workers ran (those that finished between ``start``
    and ``stop``), sorted by the start of their computation.

    Each record has dask.distributed's fields: ``key``, ``worker``, ``thread``,
    ``nbytes``, ``type``/``typename``, ``status`` ("OK" or "error") and ``startstops``,
    the phases of the task (``{"action": "compute" | "transfer" | "disk-read" |
    "disk-write", "start", "stop"}``, a transfer with its ``source`` worker).  Workers
    always record (the last ``distributed.worker.task-stream-length`` tasks each).

    ``start``, ``stop``: ``time.time()`` values or durations before now (``"60s"``).
    ``count``: the last ``count`` records (the first ``count`` after ``start`` if only
    ``start`` is given; ignored if both are).  ``plot=True``: also a chart, as
    ``(records, figure)`` (a :class:`~distributary.diagnostics.html.Figure`, shown in
    a notebook); ``plot="save"``: the chart is saved to ``filename`` too, as one HTML
    file that opens offline.
    """
    plot = check_plot(plot)
    if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
        raise TypeError(f"count must be an int or None, not {count!r}")
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    request = dg.TaskStream(timestamp(start, "start"), timestamp(stop, "stop"), count)
    records = list(await call(request))
    if not plot:
        return records
    figure = html.task_stream_figure(records)
    if plot == "save":
        figure.save(filename)
    return records, figure


async def profile(
    call: SchedulerCall,
    key: str | None = None,
    start: Any = None,
    stop: Any = None,
    workers: Any = None,
    merge_workers: bool = True,
    plot: bool | str = False,
    filename: str | None = None,
    server: bool = False,
    scheduler: bool = False,
) -> Any:
    """The statistical profile of the work done between ``start`` and ``stop``: the
    nested dict of dask.distributed (``{"count", "children", "description",
    "identifier"}``), counting samples of the stacks of the threads running tasks.

    ``key``: the tasks of this prefix only (a function name such as ``"inc"``);
    ``workers``: those workers only (addresses, names or hosts); ``merge_workers=False``:
    a profile per worker address.  ``server=True``: the workers' event loops instead
    (distributary's own work); ``scheduler=True``: the scheduler's event loop.
    ``plot=True``: ``(profile, figure)``, a flame graph; ``filename`` (or
    ``plot="save"``, to ``dask-profile.html``): the flame graph saved as one HTML file
    that opens offline.  Sampling follows ``distributed.worker.profile.*``.
    """
    plot = check_plot(plot)
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key must be a task prefix (a str) or None, not {key!r}")
    request = dg.ClusterProfile(
        key=key,
        start=timestamp(start, "start"),
        stop=timestamp(stop, "stop"),
        workers=named_workers(workers),
        merge_workers=bool(merge_workers),
        server=bool(server),
        scheduler=bool(scheduler),
    )
    state = await call(request)
    if filename:
        plot = "save"
    if not plot:
        return state
    merged = state if merge_workers or scheduler else pf.merge(*state.values())
    figure = html.profile_figure(merged, title="Profile")
    if plot == "save":
        figure.save(filename or "dask-profile.html")
    return state, figure
