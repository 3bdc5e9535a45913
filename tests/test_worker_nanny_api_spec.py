"""Every method and attribute the spec documents for ``Worker`` and ``Nanny`` exists here,
taking every parameter the spec names (by name, not only through ``**kwargs``).

The spec's text is copied into tests/spec/worker_nanny_api.txt (the Worker and Nanny
sections of the advanced Python API), so the test reads nothing outside the repository.
Methods distributary does not support yet exist and raise ``NotImplementedError`` saying
so.
"""

from __future__ import annotations

import inspect
import pathlib
import re

import pytest

from distributary import Nanny, Worker

SPEC = pathlib.Path(__file__).parent / "spec" / "worker_nanny_api.txt"

# (the spec's class line) -> our class
CLASSES = {"class distributed.Worker(": Worker, "class distributed.Nanny(": Nanny}

# Spec methods that are not supported yet: they raise NotImplementedError saying why.
NOT_YET = {"trigger_profile": "profiler", "start_ipython": "IPython kernels"}

_METHOD = re.compile(r"^(\w+)\((.*)\)$")
_ATTRIBUTE = re.compile(r"^([a-z_]+)$")


def _spec_members() -> list[tuple[type, str, list[str] | None]]:
    """``(our class, name, parameter names)`` for each member the spec documents;
    ``None`` parameters for an attribute (a name alone on its line, not one under
    "See also")."""
    members = []
    cls = None
    previous = ""
    for line in SPEC.read_text().splitlines():
        for start, ours in CLASSES.items():
            if line.startswith(start):
                cls = ours
        if cls is None or not line.strip():
            continue
        if match := _METHOD.match(line):
            name, params = match.groups()
            names = [p.strip().split("=")[0] for p in params.split(",")]
            members.append((cls, name, [n for n in names if n]))
        elif (match := _ATTRIBUTE.match(line)) and previous != "See also":
            members.append((cls, match.group(1), None))
        previous = line
    return members


MEMBERS = _spec_members()


def test_the_spec_copy_is_read():
    names = {(cls, name) for cls, name, _ in MEMBERS}
    assert len(MEMBERS) == 15
    assert {(Worker, "executor_submit"), (Worker, "worker_address"), (Nanny, "kill")} <= names
    assert (Worker, "get_worker") not in names  # (a "See also")


@pytest.mark.parametrize(
    "cls, name, params", MEMBERS, ids=[f"{c.__name__}.{n}" for c, n, _ in MEMBERS]
)
def test_the_member_exists_with_the_documented_parameters(cls, name, params):
    member = inspect.getattr_static(cls, name, None)
    assert member is not None, f"{cls.__name__}.{name} is missing"
    if params is None:
        assert isinstance(member, property), f"{cls.__name__}.{name} is not a property"
        return
    signature = inspect.signature(getattr(cls, name))
    missing = [p for p in params if p not in signature.parameters]
    assert not missing, f"{cls.__name__}.{name} lacks {missing}"
    assert member.__doc__, f"{cls.__name__}.{name} has no docstring"


@pytest.mark.parametrize("name", sorted(NOT_YET))
def test_what_is_not_supported_yet_says_so(name):
    worker = Worker.__new__(Worker)  # (no cluster needed: it refuses before any I/O)
    with pytest.raises(NotImplementedError, match=f"Worker.{name} .*{NOT_YET[name]}"):
        getattr(worker, name)()
