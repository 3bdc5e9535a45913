"""Task functions shipped to workers; they live here so workers import them by reference."""


def inc(x: int) -> int:
    """Return ``x + 1``."""
    return x + 1


def add(x: int, y: int) -> int:
    """Return ``x + y``."""
    return x + y


def noop(x: object) -> None:
    """Do nothing."""
