"""The client's shape: a Client composed of objects, futures that know only an interface."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

from distributary.client.client import Client
from distributary.client.interface import FutureOwner


def test_client_is_composed_not_mixed_in():
    assert Client.__bases__ == (object,)


def test_client_has_every_operation_its_futures_use():
    members = {
        name: value
        for name, value in vars(FutureOwner).items()
        if inspect.isfunction(value) and not name.startswith("__")
    }
    assert {"_acquire", "_drop", "_wait_for", "_gather_one", "sync"} <= set(members)
    for name, declared in members.items():
        implemented = getattr(Client, name)
        assert inspect.iscoroutinefunction(implemented) == inspect.iscoroutinefunction(declared)
        assert list(inspect.signature(implemented).parameters) == list(
            inspect.signature(declared).parameters
        ), name
    assert set(FutureOwner.__annotations__) == {"status", "loop"}


def test_futures_and_waiting_load_without_the_client():
    code = """
        import sys
        import distributary.client.future, distributary.client.waiting
        import distributary.client.structures, distributary.client.datasets
        print("distributary.client.client" in sys.modules)
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=45
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"]
