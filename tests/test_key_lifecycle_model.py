"""Randomized model test of key lifecycles across clients, scheduler and workers.

Thousands of seeded action sequences drive two clients, the scheduler and workers
(their pure state machines, wired in memory by :mod:`model_cluster`) through
submits of pure and impure keys, maps over futures, graphs in parts, releases,
cancels, forced cancels, retries, erring tasks, lost workers and new ones, and
restarts, with messages crossing in random but legal orders.  Invariants are checked after every
step; at the end every live future must hold what a sequential computation gives,
and releasing everything must leave nothing anywhere.

A failure prints its seed and the shortest action sequence found that still fails,
with what each action did.  ``MODEL_SEEDS`` and ``MODEL_STEPS`` change the run.
"""

from __future__ import annotations

import os
import random
import sys
import traceback

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from model_cluster import Action, run  # noqa: E402

SEEDS = int(os.environ.get("MODEL_SEEDS", "3000"))
STEPS = int(os.environ.get("MODEL_STEPS", "120"))

_WEIGHTS = {
    "user": 30,
    "build": 6,
    "flush": 14,
    "deliver": 36,
    "execute": 10,
    "gather": 6,
    "kill": 1,
    "add": 1,
    "restart": 0.3,
}


def actions_for(seed: int, steps: int = STEPS) -> list[Action]:
    rng = random.Random(seed)
    kinds = rng.choices(list(_WEIGHTS), weights=list(_WEIGHTS.values()), k=steps)
    return [Action(kind, *(rng.randrange(1000) for _ in range(3))) for kind in kinds]


def failure(actions: list[Action]) -> str | None:
    try:
        run(actions)
    except Exception:
        return traceback.format_exc(limit=-3)
    return None


def shrink(actions: list[Action]) -> list[Action]:
    """The shortest sequence found (by removing chunks, then single actions) that fails."""
    chunk = max(len(actions) // 2, 1)
    while chunk >= 1:
        start = 0
        while start < len(actions):
            candidate = actions[:start] + actions[start + chunk :]
            if candidate and failure(candidate) is not None:
                actions = candidate
            else:
                start += chunk
        chunk //= 2
    return actions


def explain(actions: list[Action]) -> str:
    try:
        cluster_log = _log_of(actions)
    except Exception as exc:  # (the log up to the failure)
        cluster_log = getattr(exc, "model_log", [])
    return "\n".join(f"  {line}" for line in cluster_log)


def _log_of(actions: list[Action]) -> list[str]:
    from model_cluster import STEPS as STEP_FUNCTIONS
    from model_cluster import ModelCluster

    cluster = ModelCluster()
    try:
        for action in actions:
            cluster.log.append(f"-- {action}")
            STEP_FUNCTIONS[action.kind](cluster, action)
            cluster.check_invariants()
        cluster.log.append("-- settle")
        cluster.settle()
        cluster.check_invariants()
        cluster.check_settled()
        cluster.release_everything()
        cluster.settle()
        cluster.check_empty()
    except Exception as exc:
        exc.model_log = cluster.log  # type: ignore[attr-defined]
        raise
    return cluster.log


@pytest.mark.timeout(300)
def test_key_lifecycles_hold_in_every_order():
    for seed in range(SEEDS):
        actions = actions_for(seed)
        error = failure(actions)
        if error is None:
            continue
        shortest = shrink(actions)
        pytest.fail(
            f"seed {seed} fails (MODEL_SEEDS={seed + 1} replays it):\n{error}\n"
            f"shortest failing sequence ({len(shortest)} of {len(actions)} actions):\n"
            f"{explain(shortest)}\n{failure(shortest)}",
            pytrace=False,
        )


def test_the_model_can_fail():
    """The checks catch a client that forgets a key it holds, and a wrong result."""
    from model_cluster import STEPS as STEP_FUNCTIONS
    from model_cluster import ModelCluster

    def settled_cluster() -> ModelCluster:
        cluster = ModelCluster()
        STEP_FUNCTIONS["user"](cluster, Action("user", 0, 0, 0))  # alice submits inc(0)
        cluster.settle()
        cluster.check_settled()
        return cluster

    cluster = settled_cluster()
    [handle] = cluster.clients["alice"].handles
    cluster.clients["alice"].core.futures.pop(handle.key)
    with pytest.raises(AssertionError, match="keeps"):
        cluster.check_settled()

    cluster = settled_cluster()
    [worker] = [w for w in cluster.workers.values() if handle.key in w.data]
    worker.data[handle.key] = -1
    with pytest.raises(AssertionError):
        cluster.check_settled()
