"""Every method and property the spec documents for ``Client``, ``ReplayExceptionClient``
(whose methods dask.distributed's Client has) and ``Future`` exists here, taking every
parameter the spec names (by name, not only through ``**kwargs``).

The spec's text is copied into tests/spec/client_api.txt (the Client section of the API
reference), so the test reads nothing outside the repository.
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

MEMBERS = documented_members("client_api.txt", CLASSES)


def test_the_spec_copy_is_read():
    names = {name for _, name, _ in MEMBERS}
    assert len(MEMBERS) > 50
    assert {"submit", "map", "get_executor", "recreate_error_locally", "asynchronous"} <= names


@pytest.mark.parametrize("cls, name, params", MEMBERS, ids=ids(MEMBERS))
def test_the_member_exists_with_the_documented_parameters(cls, name, params):
    check_member(cls, name, params)
