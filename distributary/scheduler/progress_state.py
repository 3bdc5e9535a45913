"""Counting tasks as they move, for progress bars: pure, no I/O, no clock.

Two counters, each fed the scheduler's transitions ``(key, start, finish)`` by the
progress extension (:mod:`distributary.scheduler.progress`) while someone wants them:

* :class:`PrefixCounts`: every task of the scheduler, by task prefix and state (and
  how many of each prefix were forgotten since counting began), for the dashboard.
* :class:`KeySetProgress`: a set of keys and the tasks they need that have not
  finished yet, by group (the task prefix, or what a function of the key says): how
  many there are, how many finished in memory, how many erred, how many were
  forgotten before they finished (cancelled), for ``progress()``.

Each costs O(1) per transition (a dict lookup and a few counts).  Both go by the state
they last counted a task in, not by the ``start`` they are told: a task the state
machine moved without a transition (a task handed back by a work-stealing victim, say)
is still counted right at its next one.  A task is counted from the first transition
it makes after counting began (a task made and forgotten in one step never is).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from distributary.scheduler.records import HELD_STATES, TaskRecord

# The states a task on the scheduler can be counted in (DESIGN.md, "Task states").
STATES = HELD_STATES


class _Prefix:
    """The counts of one task prefix, and one ``(self, state)`` pair per state (shared
    by the tasks counted there, so that a task costs one dict entry)."""

    __slots__ = ("name", "counts", "forgotten", "cells")

    def __init__(self, name: str):
        self.name = name
        self.counts = dict.fromkeys(STATES, 0)
        self.forgotten = 0
        self.cells = {state: (self, state) for state in STATES}


class PrefixCounts:
    """How many tasks of each prefix are in each state.

    Made from the tasks there are (counted once), then kept by :meth:`moved`, an
    observer of the scheduler's transitions; :meth:`restarted` after a restart.
    """

    def __init__(self, tasks: Mapping[Any, TaskRecord]):
        self._tasks = tasks
        self._prefixes: dict[str, _Prefix] = {}
        self._where: dict[Any, tuple[_Prefix, str]] = {}  # key -> where it is counted
        self.version = 0  # changes whenever a count does
        for ts in tasks.values():
            if ts.state in STATES:
                self._add(ts.key, ts.prefix, ts.state)

    def _add(self, key: Any, name: str, state: str) -> None:
        prefix = self._prefixes.get(name)
        if prefix is None:
            prefix = self._prefixes[name] = _Prefix(name)
        prefix.counts[state] += 1
        self._where[key] = prefix.cells[state]

    def moved(self, key: Any, start: str, finish: str, stimulus_id: str = "") -> None:
        """A task moved from ``start`` to ``finish`` (an observer of the transitions)."""
        where = self._where.get(key)
        if where is None:
            if finish == "forgotten":
                return  # (made and forgotten before it was counted)
            ts = self._tasks.get(key)
            if ts is not None:
                self._add(key, ts.prefix, finish)
                self.version += 1
            return
        prefix, state = where
        if state == finish:
            return
        prefix.counts[state] -= 1
        if finish == "forgotten":
            del self._where[key]
            prefix.forgotten += 1
        else:
            prefix.counts[finish] += 1
            self._where[key] = prefix.cells[finish]
        self.version += 1

    def restarted(self) -> None:
        """The scheduler forgot its tasks at once (a restart): count them forgotten."""
        tasks = self._tasks
        for key, (prefix, state) in list(self._where.items()):
            ts = tasks.get(key)
            if ts is None or ts.state not in STATES:
                prefix.counts[state] -= 1
                prefix.forgotten += 1
                del self._where[key]
        self.version += 1

    def forgotten(self) -> dict[str, int]:
        """How many tasks of each prefix were forgotten so far."""
        return {name: prefix.forgotten for name, prefix in self._prefixes.items()}

    def counts(self, since: Mapping[str, int] | None = None) -> dict[str, dict[str, int]]:
        """By prefix (in the order first seen): the tasks in each state, ``forgotten``
        (since ``since``, a :meth:`forgotten` of earlier) and ``all`` (their sum).

        A prefix with no task left and none forgotten since then is left out.
        """
        since = since or {}
        out: dict[str, dict[str, int]] = {}
        for name, prefix in self._prefixes.items():
            forgotten = prefix.forgotten - since.get(name, 0)
            active = sum(prefix.counts.values())
            if active or forgotten > 0:
                row = dict(prefix.counts)
                row["forgotten"] = max(forgotten, 0)
                row["all"] = active + row["forgotten"]
                out[name] = row
        return out


# ---------------------------------------------------------------------- a set of keys


def prefix_of(ts: TaskRecord) -> str:
    """The group of a task by default: its prefix (``"inc"`` for ``"inc-ab12..."``)."""
    return ts.prefix


def group_name(group: Any) -> str:
    """A group as it is shown (and travels): a str, bytes decoded, else its ``str``."""
    if isinstance(group, str):
        return group
    if isinstance(group, bytes):
        return group.decode(errors="replace")
    if isinstance(group, tuple) and group:  # (dask's ``(name, id)`` groups)
        return group_name(group[0])
    return str(group)


class KeySetProgress:
    """Progress of some keys and of the tasks they need.

    The tasks followed are the keys' and, through dependencies, those they need that
    have not finished: a task in memory, or one that erred, ends the walk.  With
    ``complete`` the tasks behind finished ones are counted too, as done (they were,
    for these keys).  Keys the scheduler does not have are left out.  ``group(ts)``
    names a task's group (its prefix by default).
    """

    def __init__(
        self,
        tasks: Mapping[Any, TaskRecord],
        keys: Iterable[Any],
        complete: bool = True,
        group: Callable[[TaskRecord], Any] = prefix_of,
    ):
        self.all: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.erred: dict[str, int] = {}
        self.cancelled: dict[str, int] = {}
        self.remaining: dict[Any, str] = {}  # key -> group, of the tasks not finished
        self.error_key: Any = None  # the first task seen erred, and its exception
        self.exception_text = ""
        self.version = 0
        seen: set[Any] = set()
        finished: list[TaskRecord] = []
        stack = [tasks[key] for key in keys if key in tasks]
        while stack:  # the tasks still to finish, and where they meet finished ones
            ts = stack.pop()
            if ts.key in seen:
                continue
            seen.add(ts.key)
            if ts.state == "memory":
                if complete:
                    finished.append(ts)
                continue
            name = self._group(group, ts)
            if ts.state == "erred":  # (and the erred tasks it erred for)
                self._erred(ts.key, name, ts)
                stack.extend(dep for dep in _known(tasks, ts) if dep.state == "erred")
                continue
            self.remaining[ts.key] = name
            stack.extend(_known(tasks, ts))
        while finished:  # (with ``complete``) what finished: done
            ts = finished.pop()
            name = self._group(group, ts)
            if ts.state == "erred":
                self._erred(ts.key, name, ts)
            else:
                self.done[name] += 1
            for dep in _known(tasks, ts):
                if dep.key not in seen:
                    seen.add(dep.key)
                    finished.append(dep)

    def _group(self, group: Callable[[TaskRecord], Any], ts: TaskRecord) -> str:
        """The group of ``ts``, counted in ``all``."""
        name = group_name(group(ts))
        if name not in self.all:
            self.all[name] = self.done[name] = self.erred[name] = self.cancelled[name] = 0
        self.all[name] += 1
        return name

    def _erred(self, key: Any, name: str, ts: TaskRecord | None) -> None:
        """Count ``key`` erred; name the first error (the task it blames, and its
        exception)."""
        self.erred[name] += 1
        if self.exception_text:
            return
        blame = (ts.exception_blame or ts) if ts is not None else None
        if blame is not None and blame.exception is not None:
            self.error_key = blame.key
            self.exception_text = blame.exception_text or repr(blame.exception)
        elif self.error_key is None:
            self.error_key = key

    def moved(self, key: Any, finish: str, ts: TaskRecord | None) -> bool:
        """The remaining task ``key`` moved to ``finish`` (``ts`` its record, None if
        forgotten); whether it finished (it is no longer remaining then)."""
        if finish == "memory":
            name = self.remaining.pop(key)
            self.done[name] += 1
        elif finish == "erred":
            name = self.remaining.pop(key)
            self._erred(key, name, ts)
        elif finish == "forgotten":
            name = self.remaining.pop(key)
            self.cancelled[name] += 1
        else:
            return False
        self.version += 1
        return True

    @property
    def status(self) -> str:
        """``running`` while tasks remain; then ``error`` if one erred, ``cancelled`` if
        one was forgotten first, else ``finished``."""
        if self.remaining:
            return "running"
        if any(self.erred.values()):
            return "error"
        if any(self.cancelled.values()):
            return "cancelled"
        return "finished"


def _known(tasks: Mapping[Any, TaskRecord], ts: TaskRecord) -> list[TaskRecord]:
    """The dependencies of ``ts`` that the scheduler has (one it never knew makes
    ``ts`` err)."""
    return [dep for dep in ts.dependencies if tasks.get(dep.key) is dep]
