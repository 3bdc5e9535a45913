"""The worker's memory manager: where results live, spilling to disk, and pausing.

Theory of operation
-------------------
A worker with a memory limit keeps its results in a :class:`SpillBuffer`: a
``zict.Buffer`` whose fast side is a dict and whose slow side is files in the
worker's ``local_directory/storage``.  Once the results in memory weigh more than
the *target* fraction of the limit (weights are ``dask.sizeof``), the least recently
used ones are pickled to disk; reading a spilled key loads it back, transparently.
A value that cannot be pickled stays in memory.

Results are not all the memory a process uses, so :meth:`WorkerMemoryManager.monitor`
also reads the process's resident memory every ``memory_monitor_interval``.  Past the
*spill* fraction it spills results, least recently used first, until the process is
back under the target fraction (or nothing is left to spill).  Past the *pause*
fraction it pauses the worker (no new tasks, no fetching) until memory drops below
that fraction again.  The *terminate* fraction is the nanny's to act on.

Without a memory limit (or with the target and spill fractions both off) results
live in a plain dict, and nothing here costs anything per task.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import dask.config
import psutil
import zict
from dask.sizeof import sizeof
from dask.utils import format_bytes, parse_timedelta

from distributary.node import parse_memory_limit
from distributary.protocol.serialize import Serialized, serialize

logger = logging.getLogger("distributary.worker.memory")

# A value whose size cannot be measured counts as this many bytes.
_UNKNOWN_SIZE = 1_000_000
# Seconds the spilling loop may hold the event loop before yielding to it.
_SPILL_SLICE = 0.5
# Seconds between two warnings that spilling cannot bring memory down.
_WARN_EVERY = 30.0


class WorkerMemoryManager:
    """Memory limits of one worker: builds its ``data`` mapping and watches its process.

    ``memory_limit`` is ``'auto'``, bytes, a string like ``'4GB'``, a fraction of the
    machine's memory, or 0 for none.  Each fraction (of the limit) defaults to
    ``distributed.worker.memory.<target|spill|pause>``; False or None turns it off.
    ``data`` may be a MutableMapping, a callable returning one, or a
    ``(callable, kwargs)`` tuple; by default a :class:`SpillBuffer` when there is a
    limit, else a dict.
    """

    def __init__(
        self,
        memory_limit: str | float | int | None = "auto",
        nthreads: int = 1,
        *,
        data: Any = None,
        memory_target_fraction: float | bool | None = None,
        memory_spill_fraction: float | bool | None = None,
        memory_pause_fraction: float | bool | None = None,
        memory_monitor_interval: str | float | None = None,
    ):
        self.memory_limit = parse_memory_limit(memory_limit, nthreads)
        self.memory_target_fraction = _fraction(memory_target_fraction, "target")
        self.memory_spill_fraction = _fraction(memory_spill_fraction, "spill")
        self.memory_pause_fraction = _fraction(memory_pause_fraction, "pause")
        self.memory_monitor_interval = parse_timedelta(
            memory_monitor_interval
            or dask.config.get("distributed.worker.memory.monitor-interval", default="200ms"),
            default="ms",
        )
        self._data_spec = data
        self.data: MutableMapping = {}
        self.paused = False
        self._process = psutil.Process()
        self._warned_at = float("-inf")

    def create_data(self, local_directory: str) -> MutableMapping:
        """Build the mapping for the worker's results (spilling under ``local_directory``)."""
        spec = self._data_spec
        if isinstance(spec, MutableMapping):
            self.data = spec
        elif isinstance(spec, tuple):
            factory, kwargs = spec
            self.data = factory(**kwargs)
        elif callable(spec):
            self.data = spec()
        elif self.memory_limit and (self.memory_target_fraction or self.memory_spill_fraction):
            fraction = self.memory_target_fraction or self.memory_spill_fraction
            self.data = SpillBuffer(
                os.path.join(local_directory, "storage"), target=int(self.memory_limit * fraction)
            )
        else:
            self.data = {}
        return self.data

    # ------------------------------------------------------------------ figures

    def process_memory(self) -> int:
        """Resident memory of this process, in bytes."""
        return self._process.memory_info().rss

    def managed_in_memory(self, held: int) -> int:
        """Bytes of results in memory, out of ``held`` bytes of results in memory or on disk."""
        if isinstance(self.data, SpillBuffer):
            return self.data.memory_bytes
        return held

    @property
    def spilled_bytes(self) -> int:
        """Bytes of results spilled to disk (as written)."""
        if isinstance(self.data, SpillBuffer):
            return self.data.disk_bytes
        return 0

    @property
    def monitored(self) -> bool:
        """Whether :meth:`monitor` has anything to do."""
        return bool(self.memory_limit) and bool(
            self.memory_pause_fraction
            or (self.memory_spill_fraction and isinstance(self.data, SpillBuffer))
        )

    # ------------------------------------------------------------------ the monitor

    async def monitor(self, set_paused: Callable[[bool], None]) -> None:
        """Watch the process's memory until cancelled; ``set_paused(flag)`` on each change."""
        while True:
            await asyncio.sleep(self.memory_monitor_interval)
            await self.check(set_paused)

    async def check(self, set_paused: Callable[[bool], None]) -> None:
        """One look at the process's memory: pause or unpause, and spill if needed."""
        rss = self.process_memory()
        if self.memory_pause_fraction:
            self._pause_or_unpause(rss, set_paused)
        spill = self.memory_spill_fraction
        if spill and isinstance(self.data, SpillBuffer) and rss > spill * self.memory_limit:
            await self._spill(rss)

    def _pause_or_unpause(self, rss: int, set_paused: Callable[[bool], None]) -> None:
        threshold = self.memory_pause_fraction * self.memory_limit
        if self.paused == (rss > threshold):
            return
        self.paused = not self.paused
        logger.warning(
            "Worker process memory is %s, %d%% of its %s limit (pause at %d%%): %s. "
            "Spilled to disk: %s.",
            format_bytes(rss),
            100 * rss / self.memory_limit,
            format_bytes(self.memory_limit),
            100 * self.memory_pause_fraction,
            "pausing (no new tasks, no fetching)" if self.paused else "resuming",
            format_bytes(self.spilled_bytes),
        )
        set_paused(self.paused)

    async def _spill(self, rss: int) -> None:
        """Spill results, least recently used first, until the process is under target."""
        data = self.data
        assert isinstance(data, SpillBuffer)
        target = self.memory_limit * (self.memory_target_fraction or self.memory_spill_fraction)
        spilled = count = 0
        started = last_yield = time.monotonic()
        while rss > target:
            weight = data.evict()
            if weight is None:
                self._warn_unmanaged(rss)
                break
            spilled += weight
            count += 1
            rss = self.process_memory()
            if time.monotonic() - last_yield > _SPILL_SLICE:
                await asyncio.sleep(0)  # let the worker serve its peers meanwhile
                last_yield = time.monotonic()
        if count:
            logger.debug(
                "Spilled %d results (%s) in %.2f s; process memory now %s",
                count,
                format_bytes(spilled),
                time.monotonic() - started,
                format_bytes(rss),
            )

    def _warn_unmanaged(self, rss: int) -> None:
        now = time.monotonic()
        if now - self._warned_at < _WARN_EVERY:
            return
        self._warned_at = now
        logger.warning(
            "Process memory %s is above the target of %d%% of the %s limit, and no result "
            "is left to spill (results in memory: %s). Memory held outside the results "
            "(a leak in task code, or memory not yet given back to the system) is high.",
            format_bytes(rss),
            100 * (self.memory_target_fraction or self.memory_spill_fraction),
            format_bytes(self.memory_limit),
            format_bytes(self.managed_in_memory(0)),
        )


def _fraction(value: float | bool | None, name: str) -> float:
    """A fraction of the memory limit, or 0.0 when it is off."""
    if value is None:
        value = dask.config.get(f"distributed.worker.memory.{name}", default=False)
    return float(value) if value else 0.0


# ---------------------------------------------------------------------- spilling


class SpillBuffer(zict.Buffer):
    """Results in memory up to ``target`` bytes; beyond that the least recently used
    are spilled to files in ``directory`` and read back when needed.

    ``data.memory`` holds the values in memory, ``data.disk`` the spilled ones.
    """

    def __init__(self, directory: str, target: int):
        self.files = _KeyedFiles(directory)
        super().__init__({}, _TimedFunc(self.files), target, weight=_weight)
        # zict's LRU, except that a value which cannot be spilled does not stop the others
        self.fast = _SpillLRU(
            target,
            {},
            on_evict=[self.fast_to_slow],
            on_cancel_evict=[self._cancel_evict],
            weight=_weight,
        )
        self._unspillable: set = set()

    @property
    def memory(self) -> MutableMapping:
        """The results in memory, by key."""
        return self.fast

    @property
    def disk(self) -> MutableMapping:
        """The results spilled to disk, by key (reading one loads it)."""
        return self.slow

    @property
    def on_disk(self) -> Callable[[str, float, float], None] | None:
        """Told ``(action, start, stop)`` of each value written to disk (``"disk-write"``)
        or read back (``"disk-read"``), with wall-clock times; None: nobody."""
        return self.slow.on_disk

    @on_disk.setter
    def on_disk(self, listener: Callable[[str, float, float], None] | None) -> None:
        self.slow.on_disk = listener

    @property
    def memory_bytes(self) -> int:
        """Total ``sizeof`` of the results in memory."""
        return int(self.fast.total_weight)

    @property
    def disk_bytes(self) -> int:
        """Bytes written to disk for the spilled results."""
        return self.files.total

    def evict(self) -> int | None:
        """Spill the least recently used result that can be; its size, or None if none."""
        return self.fast.evict_one()

    def fast_to_slow(self, key: Any, value: Any) -> None:
        if key in self._unspillable:
            raise _Unspillable(key)
        try:
            super().fast_to_slow(key, value)
        except Exception as exc:
            if not isinstance(exc, OSError):  # a full disk may have room later
                self._unspillable.add(key)
            logger.warning("Could not spill %r to disk; it stays in memory: %r", key, exc)
            raise _Unspillable(key) from exc

    def __setitem__(self, key: Any, value: Any) -> None:
        self._unspillable.discard(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self._unspillable.discard(key)
        super().__delitem__(key)

    def clear(self) -> None:
        # MutableMapping.clear reads every value, loading spilled ones from disk
        for key in list(self):
            del self[key]


class _Unspillable(Exception):
    """A value could not be written to disk."""

    def __init__(self, key: Any):
        super().__init__(key)
        self.key = key


class _SpillLRU(zict.LRU):
    """zict's LRU, but a value that fails to spill moves to the most recently used end
    and eviction goes on with the next one (zict's would stop and raise)."""

    def evict_until_below_target(self, n: float | None = None) -> None:
        n = self.n if n is None else n
        while self.total_weight + self.offset > n and not self.closed:
            if self.evict_one() is None:
                return

    def evict_one(self) -> int | None:
        """Evict the least recently used value that can be; its weight, or None if none."""
        for _ in range(len(self.d)):
            try:
                key, _, weight = self.evict()
            except KeyError:  # empty (or emptied by another thread)
                return None
            except _Unspillable as exc:
                with self.lock:
                    if exc.key in self.order:
                        self.order.remove(exc.key)
                        self.order.add(exc.key)
                continue
            if key is not None:
                return int(weight)
        return None


class _TimedFunc(zict.Func):
    """The spilled values (pickled into ``files``), timing each write and read for
    ``on_disk`` when someone listens."""

    def __init__(self, files: MutableMapping):
        super().__init__(_dump, _load, files)
        self.on_disk: Callable[[str, float, float], None] | None = None

    def __getitem__(self, key: Any) -> Any:
        if self.on_disk is None:
            return super().__getitem__(key)
        start = time.time()
        value = super().__getitem__(key)
        self.on_disk("disk-read", start, time.time())
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        if self.on_disk is None:
            super().__setitem__(key, value)
            return
        start = time.time()
        super().__setitem__(key, value)
        self.on_disk("disk-write", start, time.time())


class _KeyedFiles(MutableMapping):
    """``zict.File`` for any dask key (it takes str keys only), counting the bytes written."""

    def __init__(self, directory: str):
        self.directory = directory
        self._files = zict.File(directory)
        self._names: dict[Any, str] = {}
        self._nbytes: dict[Any, int] = {}
        self._counter = itertools.count()
        self.total = 0

    def __getitem__(self, key: Any) -> bytearray:
        return self._files[self._names[key]]

    def __setitem__(self, key: Any, frames: list) -> None:
        if key in self._names:
            del self[key]
        name = str(next(self._counter))
        self._files[name] = frames
        nbytes = sum(memoryview(frame).nbytes for frame in frames)
        self._names[key] = name
        self._nbytes[key] = nbytes
        self.total += nbytes

    def __delitem__(self, key: Any) -> None:
        del self._files[self._names.pop(key)]
        self.total -= self._nbytes.pop(key)

    def __contains__(self, key: object) -> bool:
        return key in self._names

    def __iter__(self) -> Iterator[Any]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


# A spill file: the number of frames, each frame's length (little-endian uint64), then
# the frames: the pickle stream and its out-of-band buffers, written without copies.
_COUNT = struct.Struct("<Q")


def _dump(value: Any) -> list:
    frames = serialize(value).frames
    lengths = [memoryview(frame).nbytes for frame in frames]
    header = struct.pack(f"<{len(frames) + 1}Q", len(frames), *lengths)
    return [header, *frames]


def _load(buffer: bytearray) -> Any:
    view = memoryview(buffer)
    (count,) = _COUNT.unpack_from(view)
    lengths = struct.unpack_from(f"<{count}Q", view, _COUNT.size)
    offset = _COUNT.size * (count + 1)
    frames = []
    for length in lengths:
        frames.append(view[offset : offset + length])  # writable views: no copy
        offset += length
    return Serialized(frames).deserialize()


def _weight(key: Any, value: Any) -> int:
    try:
        return sizeof(value)
    except Exception:
        return _UNKNOWN_SIZE
