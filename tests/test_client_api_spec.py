"""Every method and property the spec documents for ``Client``, ``ReplayExceptionClient``
(whose methods dask.distributed's Client has) and ``Future`` exists here, taking every
parameter the spec names (by name, not only through ``**kwargs``).

The spec's text is copied into tests/spec/client_api.txt (the Client section of the API
reference), so the test reads nothing outside the repository.  Methods the spec lists that
distributary does not support yet exist and raise ``NotImplementedError`` saying so.
"""

from __future__ import annotations

import inspect
import pathlib
import re

import pytest

from distributary import Client, Future

SPEC = pathlib.Path(__file__).parent / "spec" / "client_api.txt"

# (the spec's class line) -> our class
CLASSES = {
    "class distributed.Client(": Client,
    "class distributed.recreate_exceptions.ReplayExceptionClient(": Client,
    "class distributed.Future(": Future,
    "class distributed.LocalCluster(": None,  # (the end of the section read)
}

# Spec methods that are not supported yet: they raise NotImplementedError naming themselves.
NOT_YET = {
    "get_task_stream": "diagnostics",
    "profile": "diagnostics",
    "start_ipython_scheduler": "IPython kernels",
    "start_ipython_workers": "IPython kernels",
}

_METHOD = re.compile(r"^(\w+)\((.*)\)\[source\]$")
_PROPERTY = re.compile(r"^property (\w+)$")


def _spec_members() -> list[tuple[type, str, list[str]]]:
    """``(our class, name, parameter names)`` for each member the spec documents;
    ``None`` parameters for a property."""
    members = []
    cls = None
    for line in SPEC.read_text().splitlines():
        for start, ours in CLASSES.items():
            if line.startswith(start):
                cls = ours
        if cls is None:
            continue
        if match := _METHOD.match(line):
            name, params = match.groups()
            names = [
                p.strip().split("=")[0].lstrip("*\\")
                for p in params.replace("[", ",").replace("]", "").split(",")
            ]
            names = [n for n in names if n and n not in ("self", "…", "kwargs", "args")]
            members.append((cls, name, names))
        elif match := _PROPERTY.match(line):
            members.append((cls, match.group(1), None))
    return members


MEMBERS = _spec_members()


def test_the_spec_copy_is_read():
    names = {name for _, name, _ in MEMBERS}
    assert len(MEMBERS) > 50
    assert {"submit", "map", "get_executor", "recreate_error_locally", "asynchronous"} <= names


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


@pytest.mark.parametrize("name", sorted(NOT_YET))
def test_what_is_not_supported_yet_says_so(name):
    client = Client.__new__(Client)  # (no cluster needed: it refuses before any I/O)
    with pytest.raises(NotImplementedError, match=NOT_YET[name]):
        getattr(client, name)()
