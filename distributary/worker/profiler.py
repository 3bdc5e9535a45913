"""The statistical profiler: a thread that samples the stacks of the threads running
tasks, and of event loops, at an interval.

Theory of operation
-------------------
One daemon thread per process (:class:`_Sampler`, started with the first profiler and
ended with the last) wakes every ``distributed.worker.profile.interval``, reads the
current frame of every thread (``sys._current_frames``) and hands them to each
profiler registered: a worker's (:class:`WorkerProfiler`: the threads running its
tasks, by task prefix, and its event loop) or the scheduler's (:class:`LoopProfiler`:
its event loop).  Each counts its samples into the profile of the current cycle, which
joins the history every ``distributed.worker.profile.cycle``
(:class:`~distributary.diagnostics.profile.History`), where queries by time find it.
A sample of an event loop waiting for I/O is not counted, so that the loop's profile
is its busy time.  With ``distributed.worker.profile.enabled`` false nothing samples
(``trigger_profile`` still takes a sample when called).

The cost is one thread waking per interval in each process, whatever the number of
workers in it, plus a walk up each busy thread's stack; nothing per task.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

import dask.config
from dask.utils import key_split, parse_timedelta

from distributary.diagnostics import profile as pf
from distributary.protocol import diagnostics as dg
from distributary.worker.context import running_tasks

if TYPE_CHECKING:
    from distributary.worker.server import Worker

logger = logging.getLogger("distributary.worker.profiler")

# A task's stack is kept below the frame that runs it (the worker's own frames above).
_TASK_FRAMES_BELOW = os.path.join("distributary", "worker", "execution.py")
# An event loop whose innermost frame is in one of these is waiting, not working (in
# ``select``; or in a loop written in C, such as uvloop's, started from these).
_IDLE_LOOP = (
    "selectors.py",
    os.path.join("asyncio", "runners.py"),
    os.path.join("distributary", "utils", "loop.py"),
)
# Task prefixes of running keys remembered, at most (the cache starts over beyond).
_MAX_PREFIXES = 10_000


def settings() -> tuple[bool, float, float]:
    """``(enabled, interval, cycle)`` of ``distributed.worker.profile``, in seconds.

    NotImplementedError if ``low-level`` profiling is asked for: it needs the
    ``stacktrace`` package, which distributary does not support.
    """
    config = dask.config.get
    if config("distributed.worker.profile.low-level", default=False):
        raise NotImplementedError(
            "distributed.worker.profile.low-level is not supported by distributary: "
            "only Python frames are sampled (set it to False)"
        )
    enabled = bool(config("distributed.worker.profile.enabled", default=True))
    interval = parse_timedelta(config("distributed.worker.profile.interval", default="10ms"))
    cycle = parse_timedelta(config("distributed.worker.profile.cycle", default="1000ms"))
    if not interval > 0 or not cycle > 0:
        raise ValueError(
            "distributed.worker.profile.interval and .cycle must be positive durations, "
            f"not {interval!r} and {cycle!r}"
        )
    return enabled, float(interval), float(cycle)


class ThreadsProfile:
    """The samples of some threads: the profile of the current cycle, the history of
    the past ones and, with ``by_key``, the same by task prefix.

    ``stop`` and ``idle`` are :func:`~distributary.diagnostics.profile.stack`'s.
    Sampled in the sampler's thread, read in any other (a lock between).
    """

    def __init__(
        self,
        cycle: float,
        now: float,
        stop: str | None = None,
        idle: tuple[str, ...] = (),
        by_key: bool = False,
    ):
        self.cycle = cycle
        self.stop = stop
        self.idle = idle
        self.by_key = by_key
        self.history = pf.History()
        self.key_history = pf.History()
        self._lock = threading.Lock()
        self._started = self._sampled = now  # (the span of the current cycle)
        self._recent = pf.create()
        self._recent_keys: dict[str, pf.Profile] = {}
        self._prefixes: dict[Any, str] = {}

    def sample(self, frames: Mapping[int, FrameType], threads: Mapping[int, Any], now: float):
        """Count the current frames of ``threads`` (thread id -> the key of the task it
        runs, or None) among ``frames`` (all threads' current frames), at ``now``."""
        with self._lock:
            if now - self._started >= self.cycle:
                self._next_cycle(now)
            self._sampled = now
            for thread, key in threads.items():
                stack = pf.stack(frames.get(thread), self.stop, self.idle)
                if stack is None:
                    continue
                pf.add(stack, self._recent)
                if self.by_key and key is not None:
                    prefix = self._prefix(key)
                    recent = self._recent_keys.get(prefix)
                    if recent is None:
                        recent = self._recent_keys[prefix] = pf.create()
                    pf.add(stack, recent)

    def _next_cycle(self, now: float) -> None:
        if self._recent["count"]:
            self.history.add(self._started, now, self._recent)
            self._recent = pf.create()
        if self._recent_keys:
            self.key_history.add(self._started, now, self._recent_keys)
            self._recent_keys = {}
        self._started = now

    def _prefix(self, key: Any) -> str:
        prefix = self._prefixes.get(key)
        if prefix is None:
            if len(self._prefixes) >= _MAX_PREFIXES:
                self._prefixes.clear()
            prefix = self._prefixes[key] = key_split(key)
        return prefix

    def get(
        self, start: float | None = None, stop: float | None = None, key: str | None = None
    ) -> pf.Profile:
        """The profile of the samples taken between ``start`` and ``stop`` (to the
        cycle: a cycle overlapping them counts whole), of the tasks of prefix ``key``
        only unless None."""
        with self._lock:
            if key is None:
                parts = self.history.between(start, stop)
                recent = self._recent
            else:
                parts = [d[key] for d in self.key_history.between(start, stop) if key in d]
                recent = self._recent_keys.get(key)
            if recent is not None and pf.overlaps(self._started, self._sampled, start, stop):
                parts.append(recent)
            return pf.merge(*parts)


class LoopProfiler:
    """The profile of an event loop's thread: the scheduler's (and a worker's, with
    :class:`WorkerProfiler`), sampled while the loop is busy.  ``start`` it in the
    loop's thread."""

    def __init__(self) -> None:
        self.enabled, self.interval, cycle = settings()
        self.loop = ThreadsProfile(cycle, time.time(), idle=_IDLE_LOOP)
        self._loop_thread: int | None = None

    def start(self) -> None:
        """Sample the calling thread's event loop from now on (if profiling is enabled)."""
        self._loop_thread = threading.get_ident()
        if self.enabled:
            _sampler.add(self)

    def stop(self) -> None:
        """Stop sampling."""
        _sampler.remove(self)

    def tick(self, frames: Mapping[int, FrameType], now: float) -> None:
        """Take the samples of this moment, from every thread's current frame."""
        if self._loop_thread is not None:
            self.loop.sample(frames, {self._loop_thread: None}, now)


class WorkerProfiler(LoopProfiler):
    """A worker's profile: of the threads running its tasks (by task prefix too) and
    of its event loop (the ``server`` profile)."""

    def __init__(self, worker: Worker):
        super().__init__()
        self.worker = worker
        self.tasks = ThreadsProfile(
            self.loop.cycle, time.time(), stop=_TASK_FRAMES_BELOW, by_key=True
        )
        self.handlers = {
            dg.GetProfile: lambda comm, msg: self.get(msg.start, msg.stop, msg.key, msg.server)
        }

    def tick(self, frames: Mapping[int, FrameType], now: float) -> None:
        super().tick(frames, now)
        self.tasks.sample(frames, running_tasks(self.worker), now)

    def trigger(self) -> None:
        """Take one sample of the threads running tasks now."""
        self.tasks.sample(sys._current_frames(), running_tasks(self.worker), time.time())

    def get(
        self,
        start: float | None = None,
        stop: float | None = None,
        key: str | None = None,
        server: bool = False,
    ) -> pf.Profile:
        """The profile between ``start`` and ``stop``: of the tasks (of prefix ``key``
        only, unless None), or of the event loop with ``server``."""
        if server:
            return self.loop.get(start, stop)
        return self.tasks.get(start, stop, key)


class _Sampler:
    """The process's sampling thread, running while some profiler is registered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._profilers: list[LoopProfiler] = []
        self._stopping: threading.Event | None = None
        self._interval = 0.01

    def add(self, profiler: LoopProfiler) -> None:
        with self._lock:
            if profiler in self._profilers:
                return
            self._profilers.append(profiler)
            self._interval = min(p.interval for p in self._profilers)
            if self._stopping is None:
                self._stopping = threading.Event()
                thread = threading.Thread(
                    target=self._run,
                    args=(self._stopping,),
                    name="distributary-profile",
                    daemon=True,
                )
                thread.start()

    def remove(self, profiler: LoopProfiler) -> None:
        with self._lock:
            if profiler not in self._profilers:
                return
            self._profilers.remove(profiler)
            if self._profilers:
                self._interval = min(p.interval for p in self._profilers)
            elif self._stopping is not None:
                self._stopping.set()  # (the thread ends within an interval)
                self._stopping = None

    def _run(self, stopping: threading.Event) -> None:
        deadline = time.monotonic()
        while True:
            # (on a schedule: the wait for the GIL after each wake-up does not add up)
            deadline = max(deadline + self._interval, time.monotonic())
            if stopping.wait(deadline - time.monotonic()):
                return
            frames = sys._current_frames()
            now = time.time()
            for profiler in tuple(self._profilers):
                try:
                    profiler.tick(frames, now)
                except Exception:  # a bug here must not end the sampling of the others
                    logger.exception("Profiler %r failed to take a sample", profiler)
            del frames  # (they hold the threads' locals)

    def _after_fork(self) -> None:
        """In a forked child: no thread, no profilers (they were the parent's)."""
        self._lock = threading.Lock()
        self._profilers = []
        self._stopping = None


_sampler = _Sampler()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_sampler._after_fork)
