"""The client that code running inside a task uses: ``get_client`` and ``worker_client``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from distributary.client import registry
from distributary.client.client import Client
from distributary.client.registry import default_client
from distributary.comm.addressing import normalize_address
from distributary.worker.context import get_worker, rejoin, secede


def get_client(
    address: str | None = None, timeout: Any = None, resolve_address: bool = True
) -> Client:
    """The client to use here.

    Inside a task: a client of the worker's scheduler, one per worker, made on first use
    and reused (the default client of this process when that is connected to the same
    scheduler).  Elsewhere: the default client, or, given ``address``, a client of that
    scheduler (the default client if it is connected there).  A blocking call on the
    client from a task takes the task out of the worker's thread pool while it waits,
    so tasks that wait on tasks they submitted do not deadlock.  ValueError if there is
    no client to give.  ``resolve_address`` is accepted for compatibility: addresses
    are always normalized.
    """
    try:
        worker = get_worker()
    except ValueError:
        worker = None
    wanted = normalize_address(address) if address is not None else None
    if worker is not None and wanted in (None, normalize_address(worker.scheduler_address)):
        return _client_of(worker, timeout)
    if wanted is None:
        return default_client()  # (ValueError if there is none)
    client = registry.default_client_or_none()
    if client is not None and client.scheduler_address == wanted:
        return client
    return Client(wanted, timeout=timeout, set_as_default=False)


def _client_of(worker: Any, timeout: Any) -> Client:
    """The client that tasks on ``worker`` use."""
    with worker.task_client_lock:
        client = worker.task_client
        if client is None or client.status == "closed":
            scheduler = normalize_address(worker.scheduler_address)
            default = registry.default_client_or_none()
            if default is not None and default.scheduler_address == scheduler:
                return default
            client = worker.task_client = Client(
                scheduler,
                timeout=timeout,
                set_as_default=False,
                name=f"worker-{worker.name}",
                security=worker.security._as_client_for("worker"),
            )
        return client


@contextmanager
def worker_client(timeout: Any = None, separate_thread: bool = True) -> Iterator[Client]:
    """Inside a task: the worker's client (see ``get_client``), with the task out of the
    worker's thread pool while the block runs (``separate_thread=False`` keeps it in),
    rejoining it at the end.  ValueError outside a task."""
    get_worker()
    client = get_client(timeout=timeout)
    if separate_thread:
        secede()
    try:
        yield client
    finally:
        if separate_thread:
            rejoin()
