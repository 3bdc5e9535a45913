"""The CPU and network figures a worker sends in its heartbeats, for the dashboard.

Each reading is cheap (one ``/proc`` read for the process, one for the host's network
counters) and made once per heartbeat; the rates are over the time since the previous
reading.
"""

from __future__ import annotations

import time

import psutil


class UsageMeter:
    """Reads what the process and its host used since its previous reading (the first:
    since it was made): ``{"cpu": percent of one core taken by the process (over 100
    with several threads busy), "read_bps": ..., "write_bps": ...}`` (bytes per second
    received and sent by the host's network interfaces)."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._process.cpu_percent(interval=None)  # (starts the count)
        self._last = time.monotonic()
        self._net = _net_counters()

    def read(self) -> dict[str, float]:
        """The usage since the previous reading."""
        now = time.monotonic()
        elapsed = max(now - self._last, 1e-6)
        net = _net_counters()
        usage = {
            "cpu": self._process.cpu_percent(interval=None),
            "read_bps": max(net[0] - self._net[0], 0) / elapsed,
            "write_bps": max(net[1] - self._net[1], 0) / elapsed,
        }
        self._last, self._net = now, net
        return usage


def _net_counters() -> tuple[int, int]:
    try:
        counters = psutil.net_io_counters()
    except (OSError, RuntimeError):  # (no network interfaces visible)
        return 0, 0
    if counters is None:
        return 0, 0
    return counters.bytes_recv, counters.bytes_sent
