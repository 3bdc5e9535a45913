"""The decisions of adaptive scaling, without I/O: how many workers to ask for, and
which workers have been found superfluous often enough to close.

:meth:`AdaptiveCore.recommend` compares a target with the cluster's plan (the workers
asked for), what was requested (started) and what the scheduler observes.  More
workers are asked for at once; fewer only after the same workers were found
superfluous ``wait_count`` times in a row, so that a short lull does not close
workers that the next burst of work needs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Any


class AdaptiveCore:
    """Bounds (``minimum``, ``maximum`` workers) and the votes to close workers."""

    def __init__(self, minimum: int = 0, maximum: int | float = math.inf, wait_count: int = 3):
        check_bounds(minimum, maximum)
        if isinstance(wait_count, bool) or not isinstance(wait_count, int) or wait_count < 1:
            raise ValueError(f"wait_count must be a whole number at least 1, not {wait_count!r}")
        self.minimum = int(minimum)
        self.maximum = maximum if math.isinf(maximum) else int(maximum)
        self.wait_count = wait_count
        self.close_counts: dict[Any, int] = {}

    def safe(self, target: int) -> int:
        """``target`` within the bounds."""
        return int(max(self.minimum, min(target, self.maximum)))

    @staticmethod
    def to_close_first(target: int, plan: set, requested: set, observed: set) -> set:
        """Workers to close before any other when the target is below the plan: those
        started but not arrived at the scheduler yet (they hold nothing)."""
        surplus = len(plan) - target
        return set(itertools.islice(sorted(requested - observed, key=str), max(surplus, 0)))

    @classmethod
    def wants_candidates(cls, target: int, plan: set, requested: set, observed: set) -> bool:
        """Whether the scheduler must be asked which workers to close (closing those
        not arrived yet is not enough)."""
        return target < len(plan) - len(cls.to_close_first(target, plan, requested, observed))

    def recommend(
        self,
        target: int,
        plan: set,
        requested: set,
        observed: set,
        candidates: Iterable = (),
    ) -> dict:
        """``{"status": "same"}``, ``{"status": "up", "n": target}`` or ``{"status":
        "down", "workers": [names]}``; ``candidates`` are the workers the scheduler
        would close (asked for when :meth:`wants_candidates`)."""
        if target >= len(plan):
            self.close_counts.clear()
            if target == len(plan):
                return {"status": "same"}
            return {"status": "up", "n": target}
        to_close = self.to_close_first(target, plan, requested, observed)
        if target < len(plan) - len(to_close):
            to_close.update(candidates)
        firmly = []
        for name in to_close:
            self.close_counts[name] = self.close_counts.get(name, 0) + 1
            if self.close_counts[name] >= self.wait_count:
                firmly.append(name)
        for name in list(self.close_counts):  # forget those found needed again, or closed
            if name in firmly or name not in to_close:
                del self.close_counts[name]
        if firmly:
            return {"status": "down", "workers": sorted(firmly, key=str)}
        return {"status": "same"}


def check_bounds(minimum: Any, maximum: Any) -> None:
    """ValueError unless ``0 <= minimum <= maximum`` (whole numbers; maximum may be inf)."""
    for what, value in (("minimum", minimum), ("maximum", maximum)):
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not (whole or value == math.inf) or value < 0:
            raise ValueError(f"{what} must be a whole number of workers at least 0, not {value!r}")
    if minimum > maximum:
        raise ValueError(f"minimum={minimum!r} is more than maximum={maximum!r}")
