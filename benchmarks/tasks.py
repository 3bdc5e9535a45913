"""Task functions shipped to workers; they live here so workers import them by reference."""


def inc(x: int) -> int:
    """Return ``x + 1``."""
    return x + 1


def add(x: int, y: int) -> int:
    """Return ``x + y``."""
    return x + y


def noop(x: object) -> None:
    """Do nothing."""


def sleep_50ms(x: int) -> int:
    """Sleep 50 ms; return ``x``."""
    import time

    time.sleep(0.05)
    return x


def mark_and_sleep(directory: str, seconds: float) -> None:
    """Leave a file named ``<pid>-<time started>`` in ``directory``, then sleep until
    ``seconds`` have passed or a file named ``stop`` appears there."""
    import os
    import time

    open(os.path.join(directory, f"{os.getpid()}-{time.time()!r}"), "w").close()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not os.path.exists(os.path.join(directory, "stop")):
        time.sleep(0.01)


_first_started: float | None = None


def stamped_inc(x: int) -> int:
    """Return ``x + 1``, noting the wall-clock time the first call in this process began."""
    global _first_started
    if _first_started is None:
        import time

        _first_started = time.time()
    return x + 1


def first_started() -> float | None:
    """Wall-clock time this process first ran :func:`stamped_inc`, or None."""
    return _first_started


def sleep_20ms(x: int) -> int:
    """Sleep 20 ms; return ``x``."""
    import time

    time.sleep(0.02)
    return x
