"""What a progress bar shows, from the scheduler's reports: pure functions, no I/O.

A report (:class:`~distributary.protocol.progress.ProgressReport`) counts a bar's tasks
by group: ``all``, ``done`` (in memory), ``erred`` and ``cancelled``.  A task is
*finished* when it is in one of the last three; the bars fill as tasks finish, and
tell how many erred.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def format_time(seconds: float) -> str:
    """``" 1.7s"``, ``" 2min 3.0s"``, ``" 1hr  2min 3.0s"``: elapsed time as the bars show
    it."""
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours:2.0f}hr {minutes:2.0f}min {secs:4.1f}s"
    if minutes:
        return f"{minutes:2.0f}min {secs:4.1f}s"
    return f"{secs:4.1f}s"


def finished(report: Any, group: str | None = None) -> int:
    """How many tasks of the report (of one group) finished: done, erred or cancelled."""
    counts = (report.done, report.erred, report.cancelled)
    if group is None:
        return sum(sum(c.values()) for c in counts)
    return sum(c.get(group, 0) for c in counts)


def total(report: Any) -> int:
    """How many tasks the report counts."""
    return sum(report.all.values())


def fraction(done: int, of: int) -> float:
    """``done / of``, 1.0 when there is nothing to do."""
    return done / of if of else 1.0


def bar(value: float, width: int) -> str:
    """``[#####     ]``: ``value`` (0 to 1) of ``width`` characters filled."""
    return "[{0:<{1}}]".format("#" * int(width * value), width)


def ordered(all_counts: Mapping[str, int]) -> list[str]:
    """The groups, the most numerous first (then by name)."""
    return sorted(all_counts, key=lambda name: (-all_counts[name], name))


def total_line(report: Any, elapsed: float, width: int = 40) -> str:
    """``[####...] | 100% Completed |  1.7s``, with how many erred (if any)."""
    value = fraction(finished(report), total(report))
    erred = sum(report.erred.values())
    parts = [bar(value, width), f"{int(100 * value)}% Completed"]
    if erred:
        parts.append(f"{erred} erred")
    parts.append(format_time(elapsed))
    return " | ".join(parts)


def group_lines(report: Any, width: int = 40) -> list[str]:
    """One line per group: its name, bar, and ``finished / all`` (and erred, if any)."""
    names = ordered(report.all)
    pad = max((len(name) for name in names), default=0)
    lines = []
    for name in names:
        of = report.all[name]
        done = finished(report, name)
        line = f"{name:<{pad}} {bar(fraction(done, of), width)} {done} / {of}"
        erred = report.erred.get(name, 0)
        if erred:
            line += f", {erred} erred"
        lines.append(line)
    return lines


def error_text(report: Any) -> str:
    """What erred first, for the end of a bar that saw an error ("" if none)."""
    if report.error_key is None:
        return ""
    return (
        f"{report.error_key!r}: {report.exception}" if report.exception else repr(report.error_key)
    )
