"""Every method the spec documents for ``Scheduler`` exists here, taking every parameter
the spec names (by name, not only through ``**kwargs``).

The spec's text is copied into tests/spec/scheduler_api.txt (the Scheduler section of the
API reference), so the test reads nothing outside the repository.  What the methods do
is tested in tests/test_scheduler_methods.py.
"""

from __future__ import annotations

import inspect
import pathlib
import re

import pytest

from distributary import Scheduler

SPEC = pathlib.Path(__file__).parent / "spec" / "scheduler_api.txt"

_METHOD = re.compile(r"^([a-z_]\w*)\((.*)\)$")


def _spec_methods() -> list[tuple[str, list[str]]]:
    """``(name, parameter names)`` for each method the spec documents."""
    methods = []
    for line in SPEC.read_text().splitlines():
        if match := _METHOD.match(line):
            name, params = match.groups()
            names = [p.strip().split("=")[0].lstrip("*") for p in params.split(",")]
            methods.append((name, [n for n in names if n and n not in ("kwargs", "args")]))
    return methods


METHODS = _spec_methods()


def test_the_spec_copy_is_read():
    names = {name for name, _ in METHODS}
    assert len(METHODS) == 55
    assert {"adaptive_target", "workers_to_close", "stimulus_task_finished", "update_graph"} <= (
        names
    )


@pytest.mark.parametrize("name, params", METHODS, ids=[name for name, _ in METHODS])
def test_the_method_exists_with_the_documented_parameters(name, params):
    method = inspect.getattr_static(Scheduler, name, None)
    assert callable(method), f"Scheduler.{name} is missing"
    signature = inspect.signature(getattr(Scheduler, name))
    missing = [p for p in params if p not in signature.parameters]
    assert not missing, f"Scheduler.{name} lacks {missing}"
    assert getattr(Scheduler, name).__doc__, f"Scheduler.{name} has no docstring"


def test_what_is_not_supported_says_so():
    scheduler = Scheduler.__new__(Scheduler)  # (no server needed: it refuses before any I/O)
    with pytest.raises(NotImplementedError, match="IPython"):
        scheduler.start_ipython()
