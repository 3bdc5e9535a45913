"""The engine both state machines share: a transitions table run to a fixed point.

A subclass fills ``_table`` with ``(start, finish) -> method``; each method moves one
task and returns further recommendations ``{key: finish}``.  A pair missing from the
table goes through ``released``.  Every transition is logged, bounded, for ``story``,
and told to the ``observers`` (plain callables: the plugins' transition hooks), if any.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any


class InvalidTransition(RuntimeError):
    """A recommendation asked for a transition that the table does not allow.

    ``key`` names the task, ``start`` and ``finish`` the transition asked for, and
    ``story`` what the task went through before (its logged transitions).
    """

    def __init__(self, key: Any, start: str, finish: str, story: list[tuple]):
        self.key = key
        self.start = start
        self.finish = finish
        self.story = story
        recent = "; ".join(f"{a} -> {b} ({stimulus})" for _, a, b, stimulus in story[-5:])
        super().__init__(
            f"{key!r}: no transition {start} -> {finish}"
            + (f"; before it: {recent}" if recent else "")
        )

    def __reduce__(self) -> tuple:
        return (type(self), (self.key, self.start, self.finish, self.story))


class TransitionEngine:
    """Runs recommendations through a table of transitions and keeps their log."""

    tasks: dict[Any, Any]
    _table: dict[tuple[str, str], Callable[[Any, str], dict]]

    def __init__(self, transition_log_length: int):
        self.transition_log: deque = deque(maxlen=transition_log_length)
        # Each called with (key, start, finish, stimulus_id) after every transition; an
        # observer must not raise, nor change the state.
        self.observers: list[Callable[[Any, str, str, str], None]] = []

    def story(self, *keys: Any) -> list[tuple]:
        """The logged transitions ``(key, start, finish, stimulus_id)`` of these keys."""
        wanted = set(keys)
        return [entry for entry in self.transition_log if entry[0] in wanted]

    def _run(self, recs: dict, stimulus_id: str) -> None:
        tasks = self.tasks
        while recs:
            key, finish = recs.popitem()
            ts = tasks.get(key)
            if ts is None or ts.state == finish:
                continue
            recs.update(self._transition(ts, finish, stimulus_id))

    def _transition(self, ts: Any, finish: str, stimulus_id: str) -> dict:
        start = ts.state
        method = self._table.get((start, finish))
        if method is not None:
            recs = method(ts, stimulus_id)
        elif start != "released" and finish != "released":
            recs = self._transition(ts, "released", stimulus_id)
            if ts.state == "released":
                recs.pop(ts.key, None)
                recs.update(self._transition(ts, finish, stimulus_id))
            return recs
        else:
            raise InvalidTransition(ts.key, start, finish, self.story(ts.key))
        self.transition_log.append((ts.key, start, ts.state, stimulus_id))
        if self.observers:
            self._notify(ts.key, start, ts.state, stimulus_id)
        return recs

    def log(self, key: Any, start: str, finish: str, stimulus_id: str) -> None:
        """Log (and tell the observers of) a move made outside the table."""
        self.transition_log.append((key, start, finish, stimulus_id))
        if self.observers:
            self._notify(key, start, finish, stimulus_id)

    def _notify(self, key: Any, start: str, finish: str, stimulus_id: str) -> None:
        for observer in self.observers:
            observer(key, start, finish, stimulus_id)
