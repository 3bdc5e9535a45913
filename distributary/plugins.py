"""Plugins: your code run by the scheduler, every worker or every nanny at moments of
their lives.

Subclass :class:`SchedulerPlugin`, :class:`WorkerPlugin` or :class:`NannyPlugin`,
override the hooks you need and register an instance with
``client.register_plugin(plugin)``.  A scheduler plugin runs in the scheduler; a worker
or nanny plugin is pickled once and set up on every worker (nanny) there is and on
every one that joins later.  A plugin is known by its name: the ``name`` given, else
its ``name`` attribute, else one made from its class and contents.  Registering
another plugin of a name replaces the first (torn down), unless the new one is
``idempotent``: then nothing happens.  A hook may be a coroutine function (it is
awaited); what a hook raises is logged, except what ``setup`` (or ``start``) raises at
registration, which is raised to whoever registered the plugin.

:class:`UploadFile` is a worker plugin that saves a file in each worker's directory,
puts it on ``sys.path`` and imports it (``client.upload_file`` uses it).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import logging
import os
import pkgutil
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dask.base import tokenize
from dask.utils import funcname

from distributary.core.run import takes

if TYPE_CHECKING:
    from distributary.nanny.server import Nanny
    from distributary.scheduler.server import Scheduler
    from distributary.worker.server import Worker

__all__ = ["NannyPlugin", "SchedulerPlugin", "UploadFile", "WorkerPlugin"]

logger = logging.getLogger("distributary.plugins")


class SchedulerPlugin:
    """Hooks run by the scheduler, in its event loop.

    ``transition`` is called for every move of every task: keep it quick.  With
    ``idempotent = True`` registering it under a name already taken does nothing.
    """

    idempotent: bool = False

    async def start(self, scheduler: Scheduler) -> None:
        """When it is registered (or when the scheduler starts, for one added before)."""

    async def before_close(self) -> None:
        """When the scheduler begins to close."""

    async def close(self) -> None:
        """When the scheduler closes, or when the plugin is unregistered or replaced."""

    def update_graph(
        self,
        scheduler: Scheduler,
        *,
        client: str,
        keys: set,
        tasks: list,
        annotations: dict,
        priority: dict,
        stimulus_id: str,
        **kwargs: Any,
    ) -> None:
        """When a client's graph (or one part of a large one) has arrived (after its
        tasks' first transitions): ``tasks`` are its keys, ``keys`` those the client
        wants, ``priority`` each task's priority, ``annotations`` their restrictions."""

    def restart(self, scheduler: Scheduler) -> None:
        """When the cluster restarts (every task and its data are forgotten)."""

    def transition(
        self,
        key: Any,
        start: str,
        finish: str,
        *args: Any,
        stimulus_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        """When a task moves from state ``start`` to ``finish``."""

    def add_worker(self, scheduler: Scheduler, worker: str) -> None | Awaitable[None]:
        """When a worker joins (``worker`` is its address)."""

    def remove_worker(
        self, scheduler: Scheduler, worker: str, *, stimulus_id: str | None = None, **kwargs: Any
    ) -> None | Awaitable[None]:
        """When a worker leaves."""

    def log_event(self, topic: str, msg: Any) -> None:
        """When an event is logged on the scheduler (``Client.log_event``, a worker's
        ``log_event``, a worker joining or leaving)."""

    def add_client(self, scheduler: Scheduler, client: str) -> None:
        """When a client connects (``client`` is its id)."""

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        """When a client leaves."""


class WorkerPlugin:
    """Hooks run by every worker, in its event loop.

    ``worker.plugins[name]`` is the worker's copy.  With ``idempotent = True``
    registering it under a name already taken does nothing.
    """

    idempotent: bool = False

    def setup(self, worker: Worker) -> None | Awaitable[None]:
        """When the plugin is registered, on each worker there is, and on each worker
        that joins later, before it runs a task."""

    def teardown(self, worker: Worker) -> None | Awaitable[None]:
        """When the worker closes, or when the plugin is unregistered or replaced."""

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        """When a task on this worker moves from state ``start`` to ``finish``."""


class NannyPlugin:
    """Hooks run by every nanny: before its worker process starts, for a nanny that
    starts after the plugin was registered.

    With ``restart = True`` the nannies there are restart their worker processes once
    the plugin is set up (to start them with what ``setup`` changed, environment
    variables say).  With ``idempotent = True`` registering it under a name already
    taken does nothing.
    """

    idempotent: bool = False
    restart: bool = False

    def setup(self, nanny: Nanny) -> None | Awaitable[None]:
        """When the plugin is registered, on each nanny there is, and on each nanny
        that starts later."""

    def teardown(self, nanny: Nanny) -> None | Awaitable[None]:
        """When the nanny closes, or when the plugin is unregistered or replaced."""


class UploadFile(WorkerPlugin):
    """Send a file to every worker: saved in its ``local_directory``, put on
    ``sys.path`` (a ``.py`` file's directory; a ``.zip``, ``.egg`` or ``.pyz`` itself)
    and, with ``load``, imported (again, if it was already).

    Its name is ``"upload_file-<file name>"``: uploading the file again replaces it.
    """

    def __init__(self, filepath: str, load: bool = True):
        self.filename = os.path.basename(filepath)
        self.name = f"upload_file-{self.filename}"
        self.load = load
        with open(filepath, "rb") as f:
            self.data = f.read()

    def setup(self, worker: Worker) -> None:
        """Save the file on the worker and load it."""
        save_file(worker.local_directory, self.filename, self.data, self.load)


class SchedulerUploadFile(SchedulerPlugin):
    """:class:`UploadFile` for the scheduler (saved in its own ``local_directory``)."""

    def __init__(self, upload: UploadFile):
        self.name = upload.name
        self.upload = upload

    async def start(self, scheduler: Scheduler) -> None:
        """Save the file on the scheduler and load it."""
        upload = self.upload
        save_file(scheduler.local_directory, upload.filename, upload.data, upload.load)


class WorkerSetup(WorkerPlugin):
    """A function run on every worker as it is set up (``register_worker_callbacks``):
    given the worker as ``dask_worker`` if it takes that."""

    def __init__(self, setup: Callable):
        if not callable(setup):
            raise TypeError(f"register_worker_callbacks needs a callable, not {setup!r}")
        self.setup_function = setup
        self.name = f"worker-setup-{funcname(setup)}-{tokenize(setup)}"

    def setup(self, worker: Worker) -> Any:
        """Call the function (its awaitable is awaited)."""
        function = self.setup_function
        if takes(function, "dask_worker"):
            return function(dask_worker=worker)
        return function()


# ---------------------------------------------------------------------- internal


def plugin_name(plugin: Any, name: Any = None) -> str:
    """The name given, else the plugin's ``name`` attribute, else its class and a token
    of it; TypeError if that is not a non-empty str."""
    if name is None:
        name = getattr(plugin, "name", None)
    if name is None:
        try:
            token = tokenize(plugin)
        except Exception:  # (dask could not tokenize it)
            token = uuid.uuid4().hex
        name = f"{funcname(type(plugin))}-{token}"
    if not isinstance(name, str) or not name:
        raise TypeError(f"A plugin's name is a non-empty str, not {name!r}")
    return name


async def call_hook(plugin: Any, hook: str, *args: Any, **kwargs: Any) -> None:
    """Call the plugin's ``hook`` (if it has one) and await what it gives if awaitable;
    what it raises is raised."""
    method = getattr(plugin, hook, None)
    if method is not None:
        result = method(*args, **kwargs)
        if inspect.isawaitable(result):
            await result


async def logged_hook(plugin: Any, hook: str, *args: Any, **kwargs: Any) -> None:
    """:func:`call_hook`, logging what it raises."""
    await logged(call_hook(plugin, hook, *args, **kwargs), plugin, hook)


async def logged(awaitable: Awaitable, plugin: Any, hook: str) -> None:
    """Await what the plugin's ``hook`` gave, logging what it raises."""
    try:
        await awaitable
    except Exception:
        logger.exception("Plugin %r failed in %s", plugin, hook)


def observe(observers: list, observer: Callable, wanted: bool) -> None:
    """Attach ``observer`` to a state machine's ``observers`` (once), or detach it."""
    if wanted and observer not in observers:
        observers.append(observer)
    elif not wanted and observer in observers:
        observers.remove(observer)


def overrides(plugin: Any, hook: str, base: type) -> bool:
    """Whether ``plugin`` has a ``hook`` of its own (not ``base``'s, which does nothing)."""
    method = getattr(type(plugin), hook, None)
    return method is not None and method is not getattr(base, hook, None)


_ARCHIVES = (".zip", ".egg", ".pyz")


def save_file(directory: str, filename: str, data: bytes, load: bool) -> None:
    """Write ``data`` as ``filename`` in ``directory``; put it on ``sys.path`` (the
    directory for a ``.py`` file, an archive itself) and, with ``load``, import the
    modules it holds (again, if imported already).  Other files are only written."""
    if not filename or os.path.basename(filename) != filename or filename in (".", ".."):
        raise ValueError(f"Not a file name: {filename!r}")
    path = os.path.join(directory, filename)
    with open(path, "wb") as f:
        f.write(data)
    name, ext = os.path.splitext(filename)
    if ext == ".py":
        entry = directory
        with contextlib.suppress(OSError):  # (bytecode of an earlier upload)
            os.remove(importlib.util.cache_from_source(path))
    elif ext in _ARCHIVES:
        entry = path
    else:
        return
    if entry not in sys.path:
        sys.path.insert(0, entry)
    if not load:
        return
    importlib.invalidate_caches()
    names = [name] if ext == ".py" else [m.name for m in pkgutil.iter_modules([path])]
    for module_name in names:
        module = sys.modules.get(module_name)
        if module is None:
            importlib.import_module(module_name)
        else:
            importlib.reload(module)


def forget_directory(directory: str) -> None:
    """Take ``directory`` and what is in it off ``sys.path`` (it is being removed)."""
    prefix = os.path.join(directory, "")
    sys.path[:] = [p for p in sys.path if p != directory and not p.startswith(prefix)]
