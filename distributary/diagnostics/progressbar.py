"""``progress()``: follow futures (or persisted collections) to their end.

In a terminal a text bar is drawn on stdout, updated in place, until every task is
finished; in a notebook a live ipywidgets widget is returned at once (``pip install
"distributary[notebook]"``).  The tasks followed are the futures' and every task they
need that has not finished yet, counted on the scheduler by task prefix
(:mod:`distributary.scheduler.progress`); the client asks for the counts at an
``interval``, and the scheduler answers when they changed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from dask.utils import parse_timedelta

from distributary.client.future import Future
from distributary.client.registry import default_client
from distributary.client.structures import futures_of
from distributary.diagnostics import progress_text as text
from distributary.protocol import progress as pr
from distributary.protocol.serialize import serialize
from distributary.utils.loop import in_loop, running_loop

__all__ = ["MultiProgressWidget", "ProgressWidget", "TextProgressBar", "progress"]

logger = logging.getLogger("distributary.diagnostics")

_LONGEST_WAIT = 0.5  # seconds the scheduler may hold a request when nothing changed


def is_kernel() -> bool:
    """Whether this runs in an IPython kernel (a notebook, a Jupyter console)."""
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


class _Follower:
    """Follows a set of keys on the scheduler of ``client``: calls ``draw(report)``
    with each new report (at most one per ``interval``) and ``stop(report)`` at the
    end."""

    def __init__(
        self,
        keys: list,
        client: Any,
        interval: Any = "100ms",
        complete: bool = True,
        group_by: Any = "prefix",
    ):
        # (the futures are held while the bar runs: their tasks stay wanted)
        self.futures = [k for k in keys if isinstance(k, Future)]
        keys = [k.key if isinstance(k, Future) else k for k in keys]
        self.keys = list(dict.fromkeys(keys))
        self.client = client
        self.interval = parse_timedelta(interval, default="s")
        self.complete = bool(complete)
        self.group_by = None if group_by == "prefix" else serialize(group_by)
        self.status = "newly-created"
        self.report: pr.ProgressReport | None = None
        self.reports = 0  # received from the scheduler
        self._started = time.monotonic()

    @property
    def elapsed(self) -> float:
        """Seconds since the bar began."""
        return time.monotonic() - self._started

    async def listen(self) -> pr.ProgressReport:
        """Follow the keys to their end; the last report."""
        client = self.client
        call = client._call_scheduler
        start = pr.ProgressStart(
            tuple(self.keys),
            complete=self.complete,
            group_by=self.group_by,
            client=client.id,
            uid=client._outbox.flush_marker(),
        )
        report = self._got(await call(start))
        try:
            while report.state == "running":
                await asyncio.sleep(self.interval)
                get = pr.ProgressGet(
                    report.id,
                    seen=report.version,
                    timeout=max(self.interval, _LONGEST_WAIT),
                    client=client.id,
                )
                report = self._got(await call(get))
        finally:
            self.futures = []  # (the bar no longer keeps their results)
            if report.state == "running":
                self.status = "stopped"
                try:
                    client._send(pr.ProgressStop, id=report.id)
                except RuntimeError:
                    pass  # (the client closed: its bars went with it)
        self.stop(report)
        return report

    def _got(self, report: pr.ProgressReport) -> pr.ProgressReport:
        self.report = report
        self.status = report.state
        self.reports += 1
        if report.state == "running":
            self.draw(report)
        return report

    def draw(self, report: pr.ProgressReport) -> None:
        """Show a report."""

    def stop(self, report: pr.ProgressReport) -> None:
        """Show the last report."""


class TextProgressBar(_Follower):
    """A text bar on stdout, updated in place (``\\r``), that ends with a line giving
    the elapsed time.  With ``multi`` a line per task prefix follows the total: redrawn
    live on a terminal, written at the end elsewhere (a file, a pipe)."""

    def __init__(self, keys: list, client: Any, *, width: int = 40, multi: bool = False, **kwargs):
        super().__init__(keys, client, **kwargs)
        self.width = int(width)
        self.multi = bool(multi)
        self._block = 0  # lines of the per-prefix block drawn on the terminal

    @staticmethod
    def _write(chunk: str) -> None:
        out = sys.stdout
        try:
            out.write(chunk)
            out.flush()
        except ValueError:  # (stdout closed)
            pass

    def _live_block(self) -> bool:
        try:
            return self.multi and sys.stdout.isatty()
        except (AttributeError, ValueError):
            return False

    def draw(self, report: pr.ProgressReport) -> None:
        line = text.total_line(report, self.elapsed, self.width)
        if not self._live_block():
            self._write("\r" + line)
            return
        lines = [line, *(f"  {g}" for g in text.group_lines(report, self.width))]
        up = f"\x1b[{self._block}F" if self._block else "\r"
        self._write(up + "".join(f"\x1b[2K{each}\n" for each in lines))
        self._block = len(lines)

    def stop(self, report: pr.ProgressReport) -> None:
        self.draw(report)
        lines = []
        if not self._live_block():
            lines.append("")  # (ends the line drawn in place)
            if self.multi:
                lines.extend(f"  {g}" for g in text.group_lines(report, self.width))
        error = text.error_text(report)
        if error:
            lines.append(f"  Exception: {error}")
        if lines:
            self._write("\n".join(lines) + "\n")


def _ipywidgets() -> Any:
    try:
        import ipywidgets
    except ImportError as exc:
        raise ImportError(
            'progress() in a notebook needs ipywidgets: pip install "distributary[notebook]"'
        ) from exc
    return ipywidgets


class _Widget(_Follower):
    """Base of the notebook widgets: ``widget`` is what is displayed."""

    widget: Any

    def _ipython_display_(self, **kwargs: Any) -> None:
        from IPython.display import display

        display(self.widget, **kwargs)

    def _elapsed_html(self, report: pr.ProgressReport, finished: bool) -> str:
        elapsed = text.format_time(self.elapsed)
        if report.state == "error" and finished:
            what = html.escape(text.error_text(report))
            body = f"<b>Exception</b> <tt>{what}</tt>: {elapsed}"
        elif finished:
            body = f"<b>Finished:</b> {elapsed}" if report.all else "<b>Finished:</b> no tasks"
        else:
            body = f"<b>Computing:</b> {elapsed}"
        return f'<div style="padding: 0px 10px 5px 10px">{body}</div>'


def _count_html(done: int, of: int, erred: int) -> str:
    tail = f", {erred} erred" if erred else ""
    return f'<div style="padding: 0px 10px 0px 10px; text-align: right;">{done} / {of}{tail}</div>'


def _style(report: pr.ProgressReport, group: str | None = None) -> str:
    erred = report.erred.get(group, 0) if group is not None else sum(report.erred.values())
    if erred:
        return "danger"
    return "success" if report.state != "running" else ""


class ProgressWidget(_Widget):
    """One bar for all the tasks, as an ipywidgets widget (``.widget``)."""

    def __init__(self, keys: list, client: Any, **kwargs: Any):
        super().__init__(keys, client, **kwargs)
        w = _ipywidgets()
        self.elapsed_time = w.HTML("")
        self.bar = w.FloatProgress(min=0, max=1, description="")
        self.bar_text = w.HTML("")
        self.widget = w.VBox([self.elapsed_time, w.HBox([self.bar_text, self.bar])])

    def draw(self, report: pr.ProgressReport, finished: bool = False) -> None:
        done, of = text.finished(report), text.total(report)
        self.bar.value = text.fraction(done, of)
        self.bar_text.value = _count_html(done, of, sum(report.erred.values()))
        self.elapsed_time.value = self._elapsed_html(report, finished)
        if finished:
            self.bar.bar_style = _style(report)

    def stop(self, report: pr.ProgressReport) -> None:
        self.draw(report, finished=True)


class MultiProgressWidget(_Widget):
    """A bar per task prefix, as an ipywidgets widget (``.widget``): the elapsed time,
    then one row (count, bar, name) per prefix, the most numerous first."""

    def __init__(self, keys: list, client: Any, **kwargs: Any):
        super().__init__(keys, client, **kwargs)
        w = _ipywidgets()
        self.elapsed_time = w.HTML("")
        self.bars: dict[str, Any] = {}
        self.bar_texts: dict[str, Any] = {}
        self.bar_labels: dict[str, Any] = {}
        self.widget = w.VBox([self.elapsed_time, w.VBox([])])

    def _make_rows(self, report: pr.ProgressReport) -> None:
        w = _ipywidgets()
        rows = []
        for name in text.ordered(report.all):
            self.bars[name] = w.FloatProgress(min=0, max=1, description="")
            self.bar_texts[name] = w.HTML("")
            self.bar_labels[name] = w.HTML(
                '<div style="padding: 0px 10px 0px 10px; text-align: left; '
                f'word-wrap: break-word;">{html.escape(name)}</div>'
            )
            rows.append(w.HBox([self.bar_texts[name], self.bars[name], self.bar_labels[name]]))
        self.widget.children = (self.elapsed_time, w.VBox(rows))

    def draw(self, report: pr.ProgressReport, finished: bool = False) -> None:
        if not self.bars and report.all:
            self._make_rows(report)
        for name, of in report.all.items():
            done = text.finished(report, name)
            self.bars[name].value = text.fraction(done, of)
            self.bar_texts[name].value = _count_html(done, of, report.erred.get(name, 0))
            if finished:
                self.bars[name].bar_style = _style(report, name)
        self.elapsed_time.value = self._elapsed_html(report, finished)

    def stop(self, report: pr.ProgressReport) -> None:
        self.draw(report, finished=True)


# ---------------------------------------------------------------------- progress()

_OPTIONS = ("interval", "width", "scheduler", "loop")


def progress(
    *futures: Any,
    notebook: bool | None = None,
    multi: bool = True,
    complete: bool = True,
    group_by: Callable | str = "prefix",
    **kwargs: Any,
) -> Any:
    """Follow the progress of futures (or persisted collections, or keys of the
    default client) and of the tasks they need.

    In a terminal this blocks, drawing a text bar on stdout until every task finished
    (in memory or erred); with an asynchronous client it returns a task to await,
    already running.  In a notebook (``notebook=None`` tells by itself) it returns at
    once a live widget: make it the last expression of the cell to show it.

    ``multi``: a bar per task prefix (``group_by``: ``"prefix"``, or a function of a
    key naming its group, which runs on the scheduler).  ``complete``: count the tasks
    finished already too (True), or only those still to run.  ``interval`` (default
    ``"100ms"``): how often the bar asks the scheduler; ``width`` (default 40): of the
    text bar.  A dask collection that was not persisted has no futures: nothing to
    follow.

    >>> x = client.map(inc, range(10))  # doctest: +SKIP
    >>> progress(x)  # doctest: +SKIP
    [########################################] | 100% Completed |  1.7s
    """
    unknown = sorted(set(kwargs) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"progress() got unexpected keyword arguments: {unknown}")
    if group_by == "spans":
        raise NotImplementedError("progress(group_by='spans') is not supported yet: no spans")
    if group_by != "prefix" and not callable(group_by):
        raise ValueError(f"progress(group_by=...) is 'prefix' or a function, not {group_by!r}")
    keys, client = _keys_and_client(futures)
    _check_options(client, kwargs)
    options = {"complete": complete, "group_by": group_by}
    if "interval" in kwargs:
        options["interval"] = kwargs["interval"]
    if notebook is None:
        notebook = is_kernel()
    if notebook:
        kind = MultiProgressWidget if multi else ProgressWidget
        widget = kind(keys, client, **options)
        widget._listening = _start(client, widget.listen())
        return widget
    bar = TextProgressBar(keys, client, width=kwargs.get("width", 40), multi=multi, **options)
    if client.asynchronous or in_loop(client.loop):
        return _start(client, bar.listen())
    _block_on(client, bar.listen())
    return None


def _keys_and_client(futures: tuple) -> tuple[list, Any]:
    """The futures (or keys) to follow and the client that follows them (the futures',
    else the default client)."""
    found: list = futures_of(list(futures))
    if not found:
        plain = [f for f in futures if not hasattr(f, "__dask_graph__")]
        found = [k for k in _flatten(plain) if not isinstance(k, Future)]
    client = found[0].client if found and isinstance(found[0], Future) else default_client()
    return found, client


def _flatten(items: list) -> list:
    out: list = []
    for item in items:
        if isinstance(item, list | set | frozenset):
            out.extend(_flatten(list(item)))
        else:
            out.append(item)
    return out


def _check_options(client: Any, kwargs: dict) -> None:
    scheduler = kwargs.get("scheduler")
    if scheduler is not None and scheduler not in (client.scheduler_address, client):
        raise NotImplementedError(
            "progress(scheduler=...) of another cluster than the futures' client's is not "
            "supported yet"
        )
    if kwargs.get("loop") is not None:
        raise NotImplementedError("progress(loop=...) is not supported: it runs on the client's")


def _start(client: Any, coro: Any) -> Any:
    """Run ``coro`` on the client's loop without waiting: an asyncio task when called
    from that loop, else a concurrent future."""
    if running_loop() is client.loop:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(_log_failure)
        return task
    future = asyncio.run_coroutine_threadsafe(coro, client.loop)
    future.add_done_callback(_log_failure)
    return future


def _log_failure(done: asyncio.Future | concurrent.futures.Future) -> None:
    if not done.cancelled() and done.exception() is not None:
        logger.warning("A progress bar stopped: %r", done.exception())


def _block_on(client: Any, coro: Any) -> Any:
    """Run ``coro`` on the client's loop until it is done; an interrupt stops it."""
    client._check_open()
    future = asyncio.run_coroutine_threadsafe(coro, client.loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise
