"""Which client is the default: the one ``Future(key)``, ``dask.compute`` and friends use.

A client registers itself here when it connects (with ``set_as_default``) and leaves
when it closes; this module never imports the client.
"""

from __future__ import annotations

import itertools
import weakref
from typing import TYPE_CHECKING

import dask.config

if TYPE_CHECKING:
    from distributary.client.client import Client

_default_client: Client | None = None
# Every client that was made the default, by age: when the default closes, the most
# recent one still running takes over (as in dask.distributed).
_default_clients: weakref.WeakValueDictionary[int, Client] = weakref.WeakValueDictionary()
_default_counter = itertools.count()

# What dask.compute and friends use while a distributary client is the default; the
# settings that were there before come back when no default client is left.
_DASK_SETTINGS = ("scheduler", "dataframe.shuffle.method", "array.rechunk.method")
_dask_settings_before: dict | None = None


def default_client() -> Client:
    """The client that ``dask.compute`` and friends use, or ValueError if none."""
    client = _default_client
    if client is None or client.status == "closed":
        running = [c for _, c in sorted(_default_clients.items()) if c.status == "running"]
        if not running:
            raise ValueError("No clients found. Start a client with Client(...) first")
        client = running[-1]
    return client


def default_client_or_none() -> Client | None:
    """The default client, or None if there is none."""
    try:
        return default_client()
    except ValueError:
        return None


def make_default(client: Client) -> None:
    """Make ``client`` the default client, and dask's scheduler."""
    global _default_client
    _default_client = client
    _default_clients[next(_default_counter)] = client
    _use_for_dask(client)


def leave(client: Client) -> None:
    """``client`` closed: the most recent running default client (if any) takes over."""
    global _default_client
    if _default_client is client:
        _default_client = None
    if dask.config.get("scheduler", None) is client:
        try:
            _use_for_dask(default_client())
        except ValueError:
            _use_for_dask(None)


def _use_for_dask(client: Client | None) -> None:
    global _dask_settings_before
    if client is not None:
        if _dask_settings_before is None:
            _dask_settings_before = {k: dask.config.get(k, None) for k in _DASK_SETTINGS}
        dask.config.set(
            {
                "scheduler": client,
                "dataframe.shuffle.method": "tasks",
                "array.rechunk.method": "tasks",
            }
        )
    elif _dask_settings_before is not None:
        dask.config.set(_dask_settings_before)
        _dask_settings_before = None
