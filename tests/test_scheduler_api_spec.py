"""Every method the spec documents for ``Scheduler`` exists here, taking every parameter
the spec names (by name, not only through ``**kwargs``).

The spec's text is copied into tests/spec/scheduler_api.txt (the Scheduler section of the
API reference), so the test reads nothing outside the repository.  What the methods do
is tested in tests/test_scheduler_methods.py.
"""

from __future__ import annotations

import pytest
from spec_api import check_member, documented_members, ids

from distributary import Scheduler

MEMBERS = documented_members("scheduler_api.txt", {"class distributed.Scheduler(": Scheduler})


def test_the_spec_copy_is_read():
    names = {name for _, name, _ in MEMBERS}
    assert len(MEMBERS) == 55
    assert {"adaptive_target", "workers_to_close", "stimulus_task_finished", "update_graph"} <= (
        names
    )


@pytest.mark.parametrize("cls, name, params", MEMBERS, ids=ids(MEMBERS))
def test_the_method_exists_with_the_documented_parameters(cls, name, params):
    check_member(cls, name, params)
