"""Registering plugins (:mod:`distributary.plugins`) and uploading files, as a client.

Each function makes its requests to the scheduler through ``call`` (see
:mod:`distributary.client.cluster`).  A plugin is pickled here, once: what cannot be
pickled is a TypeError naming it before anything is sent.  A worker or nanny plugin
whose ``setup`` raised somewhere raises that error here (the plugin stays registered,
for the workers where it works and those that join later).
"""

from __future__ import annotations

import warnings
from typing import Any

from distributary.client.calls import SchedulerCall
from distributary.plugins import (
    NannyPlugin,
    SchedulerPlugin,
    SchedulerUploadFile,
    UploadFile,
    WorkerPlugin,
    WorkerSetup,
    plugin_name,
)
from distributary.protocol import plugins as pl
from distributary.protocol.errors import RemoteError
from distributary.protocol.serialize import serialize

_KINDS = ((SchedulerPlugin, "scheduler"), (WorkerPlugin, "worker"), (NannyPlugin, "nanny"))


def _kind(plugin: Any) -> str | None:
    for base, kind in _KINDS:
        if isinstance(plugin, base):
            return kind
    return None


async def register_plugin(
    call: SchedulerCall, plugin: Any, name: str | None = None, idempotent: bool | None = None
) -> Any:
    """Register a SchedulerPlugin on the scheduler, or a WorkerPlugin (NannyPlugin) on
    every worker (nanny) there is and will be: None for a scheduler plugin, else what
    each worker said (``{address: {"status": "OK"}}``).  It replaces a plugin of its
    name, unless ``idempotent`` (default: its own ``idempotent``).  An error of its
    ``setup`` is raised here."""
    kind = _kind(plugin)
    if kind is None:
        raise TypeError(
            "register_plugin takes an instance of a subclass of SchedulerPlugin, "
            f"WorkerPlugin or NannyPlugin, not {_describe(plugin)}"
        )
    if kind == "scheduler":
        return await register_scheduler_plugin(call, plugin, name, idempotent)
    idempotent = _idempotent(plugin, idempotent)
    return await _register_on_workers(call, plugin, name, idempotent, kind == "nanny")


async def register_scheduler_plugin(
    call: SchedulerCall, plugin: Any, name: str | None = None, idempotent: bool | None = None
) -> None:
    """Register a scheduler plugin (an object of another class with its hooks, too)."""
    if _kind(plugin) not in ("scheduler", None) or isinstance(plugin, type):
        raise TypeError(
            f"register_scheduler_plugin takes a SchedulerPlugin, not {_describe(plugin)}"
        )
    idempotent = _idempotent(plugin, idempotent)
    request = pl.RegisterSchedulerPlugin(_pickled(plugin), plugin_name(plugin, name), idempotent)
    await call(request)


async def register_worker_plugin(
    call: SchedulerCall, plugin: Any = None, name: str | None = None, nanny: bool | None = None
) -> dict:
    """Register a worker or nanny plugin (as its class says; a plugin of neither class
    is a worker plugin, or a nanny plugin with ``nanny=True``) on every worker (nanny)
    there is and will be; ``{address: {"status": "OK"}}``.  See ``register_plugin``."""
    kind = _kind(plugin)
    if kind == "scheduler" or plugin is None or isinstance(plugin, type):
        raise TypeError(f"register_worker_plugin takes a WorkerPlugin, not {_describe(plugin)}")
    if kind is None:
        kind = "nanny" if nanny else "worker"
    elif nanny is not None and nanny != (kind == "nanny"):
        warnings.warn(
            f"nanny={nanny} is ignored: {type(plugin).__name__} is a {kind} plugin",
            UserWarning,
            stacklevel=2,
        )
    idempotent = _idempotent(plugin, None)
    return await _register_on_workers(call, plugin, name, idempotent, kind == "nanny")


async def unregister_worker_plugin(
    call: SchedulerCall, name: str, nanny: bool | None = None
) -> dict:
    """Unregister the worker (nanny) plugin ``name``, torn down where it is set up;
    what each worker said.  ValueError if there is no such plugin."""
    said = await call(pl.UnregisterWorkerPlugin(name, nanny=bool(nanny)))
    return _statuses_or_raise(said)


async def unregister_scheduler_plugin(call: SchedulerCall, name: str) -> None:
    """Unregister (and close) the scheduler plugin ``name``; ValueError if there is none."""
    await call(pl.UnregisterSchedulerPlugin(name))


async def register_worker_callbacks(call: SchedulerCall, setup: Any = None) -> dict:
    """Run ``setup`` on every worker there is and will be (given the worker as
    ``dask_worker`` if it takes that)."""
    return await register_plugin(call, WorkerSetup(setup), None, None)


async def upload_file(call: SchedulerCall, filename: str, load: bool = True) -> dict:
    """Send a file to the scheduler, then to every worker there is and will be; each
    saves it in its directory, puts it on ``sys.path`` and, with ``load``, imports it.
    What the scheduler or a worker raised loading it is raised here."""
    upload = UploadFile(filename, load=load)
    await register_plugin(call, SchedulerUploadFile(upload), None, False)
    return await register_plugin(call, upload, None, False)


async def _register_on_workers(
    call: SchedulerCall, plugin: Any, name: str | None, idempotent: bool, nanny: bool
) -> dict:
    name = plugin_name(plugin, name)
    request = pl.RegisterWorkerPlugin(_pickled(plugin), name, idempotent=idempotent, nanny=nanny)
    return _statuses_or_raise(await call(request))


def _idempotent(plugin: Any, idempotent: bool | None) -> bool:
    if idempotent is None:
        idempotent = getattr(plugin, "idempotent", False)
    if not isinstance(idempotent, bool):
        raise TypeError(f"idempotent is True or False, not {idempotent!r}")
    return idempotent


def _describe(plugin: Any) -> str:
    if isinstance(plugin, type):
        return f"the class {plugin.__name__} (an instance of it is)"
    return repr(type(plugin).__name__)


def _statuses_or_raise(said: dict) -> dict:
    """What each worker said; the first error, raised."""
    for ran in said.values():
        if ran.error is not None:
            raise RemoteError.from_reply(ran.error).rebuild()
    return pl.statuses(said)


def _pickled(plugin: Any) -> Any:
    try:
        return serialize(plugin)
    except TypeError as exc:
        raise TypeError(f"Could not pickle the plugin {plugin!r}: {exc}") from exc
