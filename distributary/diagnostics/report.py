"""``performance_report``: one self-contained HTML file telling what a block of code
made the cluster do.

The report holds a summary (duration, tasks, time spent computing, transferring and on
disk, the cluster, the code of the block), the task stream of the block, the flame
graph of the workers' profile over it, the bandwidth between each pair of workers (from
their transfer records), and the profiles of the workers' and the scheduler's event
loops.  The client gathers the data when the block ends and renders the page
(:mod:`distributary.diagnostics.html`); the browser draws the charts, offline.
"""

from __future__ import annotations

import ast
import asyncio
import bz2
import contextlib
import gzip
import linecache
import logging
import lzma
import os
import sys
import textwrap
import time
from collections import defaultdict
from collections.abc import Iterator
from types import FrameType
from typing import Any

import dask
from dask.utils import format_bytes, format_time

from distributary import __version__
from distributary.client.calls import SchedulerCall
from distributary.client.in_task import get_client
from distributary.diagnostics import html
from distributary.protocol import diagnostics as dg
from distributary.protocol import requests as rq

logger = logging.getLogger("distributary.diagnostics")

_MODES = (None, "inline")
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


class performance_report:  # noqa: N801  (dask.distributed's name)
    """Write a performance report of the block to ``filename``: one HTML file that opens
    offline in a browser.

    >>> with performance_report(filename="dask-report.html"):
    ...     x.compute()

    Works as ``with`` and, with an asynchronous client, ``async with``; the client is
    the current one (``get_client()``).  The report is written even if the block
    raises (and the exception goes on).  ``stacklevel``: which caller's code the report
    shows (1: the code around the ``with``).  A file name ending with ``.gz``, ``.bz2``
    or ``.xz`` is compressed.  ``mode``: the report always inlines its script (no CDN),
    so only None and ``"inline"`` are taken; ``storage_options`` (for remote paths
    through fsspec) is not supported yet.
    """

    def __init__(
        self,
        filename: str | os.PathLike = "dask-report.html",
        stacklevel: int = 1,
        mode: str | None = None,
        storage_options: dict | None = None,
    ):
        if mode not in _MODES:
            raise NotImplementedError(
                f"performance_report(mode={mode!r}) is not supported: the report always "
                "inlines its script and styles (mode None or 'inline')"
            )
        if storage_options:
            raise NotImplementedError(
                "performance_report(storage_options=...) is not supported by distributary "
                "yet: the report is written to a local file"
            )
        path = os.fspath(filename)
        if "://" in path and not path.startswith("file://"):
            raise NotImplementedError(
                f"performance_report(filename={path!r}): only local files are supported yet"
            )
        self.filename = path.removeprefix("file://")
        self.stacklevel = max(int(stacklevel), 1)
        self.mode = mode
        self.start = 0.0
        self._frame: FrameType | None = None
        self._client: Any = None

    def _begin(self, depth: int) -> None:
        self._client = get_client()
        self._frame = sys._getframe(depth + self.stacklevel)
        self._line = self._frame.f_lineno
        self.start = time.time()

    def __enter__(self) -> performance_report:
        self._begin(1)
        return self

    async def __aenter__(self) -> performance_report:
        self._begin(1)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        client = self._client
        if client.asynchronous:
            raise TypeError("performance_report with an asynchronous client: use 'async with'")
        with _reporting(exc):
            self._write(client.sync(self._render, client._call_scheduler, exc))

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        client = self._client
        if not client.asynchronous:
            raise TypeError("async with performance_report needs an asynchronous client")
        with _reporting(exc):
            self._write(await self._render(client._call_scheduler, exc))

    def _write(self, text: str) -> None:
        opener = _OPENERS.get(os.path.splitext(self.filename)[1], open)
        with opener(self.filename, "wt", encoding="utf-8") as f:
            f.write(text)

    async def _render(self, call: SchedulerCall, exc: BaseException | None) -> str:
        stop = time.time()
        code = calling_code(self._frame, self._line) if self._frame is not None else ""
        self._frame = None  # (it holds the caller's locals)
        return await report(call, self.start, stop, code, exc)


@contextlib.contextmanager
def _reporting(exc: BaseException | None) -> Iterator[None]:
    """Around writing the report: a failure is raised, unless the block raised already
    (then it is logged, and the block's exception goes on)."""
    try:
        yield
    except Exception as error:
        if exc is None:
            raise
        logger.error("Could not write the performance report: %r", error)


async def report(
    call: SchedulerCall,
    start: float,
    stop: float,
    code: str = "",
    exc: BaseException | None = None,
) -> str:
    """The HTML of the report of what the cluster did from ``start`` to ``stop``."""
    records, transfers, compute, loops, scheduler, identity = await asyncio.gather(
        call(dg.TaskStream(start=start)),
        call(dg.ClusterTransfers(start=start)),
        call(dg.ClusterProfile(start=start)),
        call(dg.ClusterProfile(start=start, server=True)),
        call(dg.ClusterProfile(start=start, scheduler=True)),
        call(rq.Identity()),
    )
    items = summary(records, transfers, identity, start, stop, exc)
    sections = [
        html.summary_section(items, code),
        html.task_stream_section(records),
        html.flame_graph_section(compute, "Worker Profile (compute)"),
        html.bandwidth_section(transfers, "Bandwidth (Workers)"),
        html.flame_graph_section(
            loops, "Worker Profile (administrative)", "The workers' event loops, while busy."
        ),
        html.flame_graph_section(
            scheduler, "Scheduler Profile (administrative)", "The scheduler's event loop."
        ),
    ]
    return html.page("Dask Performance Report", sections)


def summary(
    records: Any,
    transfers: Any,
    identity: dict,
    start: float,
    stop: float,
    exc: BaseException | None,
) -> list[tuple[str, str]]:
    """The summary's ``(label, value)`` pairs."""
    spent: defaultdict[str, float] = defaultdict(float)
    for record in records:
        for phase in record["startstops"]:
            spent[phase["action"]] += max(phase["stop"] - phase["start"], 0.0)
    errors = sum(1 for record in records if record.get("status") != "OK")
    moved = sum(t["nbytes"] for t in transfers)
    workers = identity.get("workers", {})
    items = [
        ("Duration", format_time(stop - start)),
        ("Started", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start))),
        ("Outcome", "completed" if exc is None else f"raised {exc!r}"),
        ("Number of tasks", str(len(records))),
        ("Tasks that failed", str(errors)),
        ("Compute time", format_time(spent["compute"])),
        ("Transfer time", format_time(spent["transfer"])),
        ("Disk time", format_time(spent["disk-read"] + spent["disk-write"])),
        ("Transfers", f"{len(transfers)} ({format_bytes(moved)})"),
        ("Scheduler", str(identity.get("address", ""))),
        ("Workers", str(len(workers))),
        ("Threads", str(sum(w.get("nthreads", 0) for w in workers.values()))),
        ("Memory", format_bytes(sum(w.get("memory_limit") or 0 for w in workers.values()))),
        ("distributary version", __version__),
        ("dask version", dask.__version__),
    ]
    return items


def calling_code(frame: FrameType, line: int) -> str:
    """The source of the ``with`` statement at ``line`` in ``frame``'s code (the whole
    line if it cannot be found); empty if the source is not available."""
    filename = frame.f_code.co_filename
    lines = linecache.getlines(filename, frame.f_globals)
    if not lines:
        return ""
    source = "".join(lines)
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return lines[line - 1].strip() if 0 < line <= len(lines) else ""
    headers = [  # the with statements whose header holds the line
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.With | ast.AsyncWith)
        and node.lineno <= line < max(node.body[0].lineno, node.lineno + 1)
    ]
    found = max(headers, key=lambda node: node.lineno, default=None)
    if found is None:
        return lines[line - 1].strip() if 0 < line <= len(lines) else ""
    segment = ast.get_source_segment(source, found, padded=True) or ""
    return textwrap.dedent(segment)
