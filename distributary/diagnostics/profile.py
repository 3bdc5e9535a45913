"""Statistical profiles: stacks sampled from threads, counted in a tree.

Theory of operation
-------------------
A profile is the nested dict of dask.distributed: each node is
``{"identifier", "description", "count", "children"}``.  The root's identifier is
``"root"``; below it each node is a function being run in the samples that pass through
it, ``identifier`` being ``"name;filename;first line"`` of its code, ``description``
``{"filename", "name", "line_number", "line"}`` (the line it was at in the first sample
that reached it) and ``count`` the number of samples through it.  ``children`` holds
the nodes it called, by identifier.

:func:`process` adds one sample (a thread's current frame, walked up to the root) to a
profile; :func:`merge` adds profiles up; :class:`History` keeps the profiles of past
cycles (a cycle being a second of samples, say), each with its time span, and answers
for a span of time.  Nothing here reads a clock or starts a thread: the sampling thread
is :mod:`distributary.worker.profiler`.
"""

from __future__ import annotations

import linecache
from collections import deque
from collections.abc import Iterable, Iterator
from types import CodeType, FrameType
from typing import Any

Profile = dict[str, Any]

# The deepest stack kept, in frames from the root (the wire format nests two levels per
# frame, and msgpack refuses to nest more than 511).
MAX_DEPTH = 200
# Code objects whose identifier is kept; the cache starts over beyond that.
_MAX_IDENTIFIERS = 100_000
_identifiers: dict[CodeType, str] = {}


def create() -> Profile:
    """An empty profile: the root, with no samples."""
    return {
        "count": 0,
        "children": {},
        "identifier": "root",
        "description": {"filename": "", "name": "", "line_number": 0, "line": ""},
    }


def identifier(code: CodeType) -> str:
    """The identifier of a node running ``code``: ``"name;filename;first line"``."""
    found = _identifiers.get(code)
    if found is None:
        if len(_identifiers) >= _MAX_IDENTIFIERS:
            _identifiers.clear()
        found = _identifiers[code] = f"{code.co_name};{code.co_filename};{code.co_firstlineno}"
    return found


def describe(frame: FrameType) -> dict[str, Any]:
    """The description of a node, from a frame running its code."""
    code = frame.f_code
    line_number = frame.f_lineno or 0
    return {
        "filename": code.co_filename,
        "name": code.co_name,
        "line_number": line_number,
        "line": linecache.getline(code.co_filename, line_number).lstrip(),
    }


def stack(
    frame: FrameType | None, stop: str | None = None, idle: Iterable[str] = ()
) -> list[FrameType] | None:
    """The frames of a sample, root first: from ``frame`` up through its callers, up to
    (not including) the first one whose file name ends with ``stop``, and at most
    :data:`MAX_DEPTH` of them from the root.  None if there are none, or if the
    innermost one's file name ends with one of ``idle`` (a thread waiting, such as an
    idle event loop in ``selectors.py``)."""
    if frame is None or (idle and frame.f_code.co_filename.endswith(tuple(idle))):
        return None
    frames: list[FrameType] = []
    while frame is not None:
        if stop is not None and frame.f_code.co_filename.endswith(stop):
            break
        frames.append(frame)
        frame = frame.f_back
    if not frames:
        return None
    frames.reverse()
    return frames[:MAX_DEPTH]


def add(frames: list[FrameType], state: Profile) -> None:
    """Count one sample, the stack ``frames`` (root first), in the profile ``state``."""
    node = state
    node["count"] += 1
    for f in frames:
        ident = identifier(f.f_code)
        children = node["children"]
        child = children.get(ident)
        if child is None:
            child = children[ident] = {
                "count": 0,
                "description": describe(f),
                "children": {},
                "identifier": ident,
            }
        child["count"] += 1
        node = child


def process(
    frame: FrameType | None,
    state: Profile,
    stop: str | None = None,
    idle: Iterable[str] = (),
) -> bool:
    """Add the sample of a thread whose current frame is ``frame`` to the profile
    ``state`` (see :func:`stack` for ``stop`` and ``idle``); whether it was added."""
    frames = stack(frame, stop, idle)
    if frames is None:
        return False
    add(frames, state)
    return True


def merge(*profiles: Profile) -> Profile:
    """One profile counting the samples of all of ``profiles`` (a new dict; the
    description of a node is that of its first profile)."""
    profiles = tuple(p for p in profiles if p and p.get("count"))
    if not profiles:
        return create()
    first = profiles[0]
    merged = {
        "count": 0,
        "children": {},
        "identifier": first["identifier"],
        "description": first["description"],
    }
    todo = [(merged, profiles)]
    while todo:  # (iterative: stacks may be deep)
        target, sources = todo.pop()
        target["count"] = sum(source["count"] for source in sources)
        by_child: dict[str, list[Profile]] = {}
        for source in sources:
            for ident, child in source["children"].items():
                by_child.setdefault(ident, []).append(child)
        for ident, children in by_child.items():
            node = {
                "count": 0,
                "description": children[0]["description"],
                "children": {},
                "identifier": ident,
            }
            target["children"][ident] = node
            todo.append((node, tuple(children)))
    return merged


def nodes(profile: Profile) -> Iterator[Profile]:
    """Every node of ``profile``, the root first (depth first)."""
    todo = [profile]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(node["children"].values())


def names(profile: Profile) -> set[str]:
    """The names of the functions in ``profile``."""
    return {node["description"]["name"] for node in nodes(profile)} - {""}


class History:
    """The values (profiles, or profiles by task prefix) of the last ``length`` cycles,
    each with the time span it covers, oldest first."""

    def __init__(self, length: int = 3600):
        self._cycles: deque[tuple[float, float, Any]] = deque(maxlen=length)

    def add(self, start: float, stop: float, value: Any) -> None:
        """Keep ``value``, the samples taken from ``start`` to ``stop``."""
        self._cycles.append((start, stop, value))

    def between(self, start: float | None = None, stop: float | None = None) -> list[Any]:
        """The values of the cycles that overlap [``start``, ``stop``] (None: no bound),
        oldest first."""
        return [
            value for began, ended, value in self._cycles if overlaps(began, ended, start, stop)
        ]

    def __len__(self) -> int:
        return len(self._cycles)


def overlaps(began: float, ended: float, start: float | None, stop: float | None) -> bool:
    """Whether [``began``, ``ended``] overlaps [``start``, ``stop``] (None: no bound)."""
    return (start is None or ended >= start) and (stop is None or began <= stop)
