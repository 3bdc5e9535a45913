"""A client process that takes a Lock or a Semaphore lease and keeps it until killed.

``python lock_holder.py ADDRESS lock|semaphore NAME`` connects to the scheduler at
ADDRESS, acquires, prints "acquired" and waits for its standard input to close.
Tests start it with :func:`start_holder` and kill it with SIGKILL.
"""

from __future__ import annotations

import subprocess
import sys


def start_holder(address: str, kind: str, name: str) -> subprocess.Popen:
    """Start a holder process of the lock or semaphore ``name`` (kind "lock" or
    "semaphore") at the scheduler ``address``."""
    return subprocess.Popen(
        [sys.executable, __file__, address, kind, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def main(address: str, kind: str, name: str) -> None:
    from distributary import Client, Lock, Semaphore

    client = Client(address)
    held = Lock(name, client=client) if kind == "lock" else Semaphore(1, name, client=client)
    assert held.acquire(timeout=30)
    print("acquired", flush=True)
    sys.stdin.read()
    client.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
