"""Every method and property the spec documents for ``Client``, ``ReplayExceptionClient``
(whose methods dask.distributed's Client has) and ``Future`` exists here, taking every
parameter the spec names (by name, not only through ``**kwargs``).

The spec's text is copied into tests/spec/client_api.txt (the Client section of the API
reference), so the test reads nothing outside the repository.  Methods the spec lists that
distributary does not support yet exist and raise ``NotImplementedError`` saying so.
"""

from __future__ import annotations

import pytest
from spec_api import check_member, documented_members, ids

from distributary import Client, Future

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
}

MEMBERS = documented_members("client_api.txt", CLASSES)


def test_the_spec_copy_is_read():
    names = {name for _, name, _ in MEMBERS}
    assert len(MEMBERS) > 50
    assert {"submit", "map", "get_executor", "recreate_error_locally", "asynchronous"} <= names


@pytest.mark.parametrize("cls, name, params", MEMBERS, ids=ids(MEMBERS))
def test_the_member_exists_with_the_documented_parameters(cls, name, params):
    check_member(cls, name, params)


@pytest.mark.parametrize("name", sorted(NOT_YET))
def test_what_is_not_supported_yet_says_so(name):
    client = Client.__new__(Client)  # (no cluster needed: it refuses before any I/O)
    with pytest.raises(NotImplementedError, match=NOT_YET[name]):
        getattr(client, name)()
