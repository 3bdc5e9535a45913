"""Every method and attribute the spec documents for ``Worker`` and ``Nanny`` exists here,
taking every parameter the spec names (by name, not only through ``**kwargs``).

The spec's text is copied into tests/spec/worker_nanny_api.txt (the Worker and Nanny
sections of the advanced Python API), so the test reads nothing outside the repository.
"""

from __future__ import annotations

import pytest
from spec_api import check_member, documented_members, ids

from distributary import Nanny, Worker

CLASSES = {"class distributed.Worker(": Worker, "class distributed.Nanny(": Nanny}
MEMBERS = documented_members("worker_nanny_api.txt", CLASSES, attributes=True)


def test_the_spec_copy_is_read():
    names = {(cls, name) for cls, name, _ in MEMBERS}
    assert len(MEMBERS) == 15
    assert {(Worker, "executor_submit"), (Worker, "worker_address"), (Nanny, "kill")} <= names
    assert (Worker, "get_worker") not in names  # (a "See also")


@pytest.mark.parametrize("cls, name, params", MEMBERS, ids=ids(MEMBERS))
def test_the_member_exists_with_the_documented_parameters(cls, name, params):
    check_member(cls, name, params)
