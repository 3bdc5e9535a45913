"""The scheduler's plugins, and the worker and nanny plugins it hands out.

Theory of operation
-------------------
*Scheduler plugins* are kept by name and told what happens: the state machine tells
of every transition through one observer, and of every graph it takes in through
another, before any of its tasks moves (each attached while some plugin has the hook,
``transition`` or ``update_graph``, so that without one nothing pays for plugins); its
notices (:class:`~distributary.scheduler.instructions.Notice`: a worker or client came
or went) and ``ClusterRestarted`` come here as instructions.  A hook
is called at once; what it gives, if awaitable, is awaited in a task of its own; what
it raises is logged.  A plugin registered by a client is started first (what ``start``
raises is the client's error, and the plugin is not kept) and closed when unregistered
or replaced; one added with :meth:`PluginRegistry.add` (``Scheduler.add_plugin``) is
started with the scheduler, if it was not running yet.  All are closed with it.

*Worker and nanny plugins* stay pickled here, numbered by registration (see
:mod:`distributary.protocol.plugins`): each is passed on to every worker (or nanny)
there is, and every worker or nanny that starts asks for those registered.  A nanny
asks before its worker has joined, so each worker with a nanny that joins is offered
the nanny plugins again (its nanny skips those it has).  A worker that cannot be
reached is left out of the answer: it is gone, or asks again as it comes back.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import shutil
import tempfile
from typing import Any

from distributary.plugins import (
    SchedulerPlugin,
    call_hook,
    forget_directory,
    logged,
    logged_hook,
    observe,
    overrides,
    plugin_name,
)
from distributary.protocol import plugins as pl
from distributary.protocol.requests import Ran
from distributary.protocol.serialize import Serialized, deserialize, serialize
from distributary.scheduler import instructions as ins
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension

logger = logging.getLogger("distributary.plugins")

_RESTRICTIONS = ("retries", "workers", "allow_other_workers", "resources")


class PluginRegistry(SchedulerExtension):
    """The scheduler plugins (``plugins``, by name) and the worker and nanny plugins."""

    def __init__(self, scheduler: SchedulerContext):
        super().__init__(scheduler)
        self.plugins: dict[str, Any] = {}
        self._pickled: dict[bool, dict[str, pl.Plugin]] = {False: {}, True: {}}  # nanny?
        self._seq = itertools.count(1)
        self._watching: list[Any] = []  # the scheduler plugins with a transition hook
        self._tasks: set[asyncio.Task] = set()
        self._directory: str | None = None
        self.handlers.update(
            {
                pl.RegisterSchedulerPlugin: self._handle_register,
                pl.UnregisterSchedulerPlugin: self._handle_unregister,
                pl.RegisterWorkerPlugin: self._handle_register_worker_plugin,
                pl.UnregisterWorkerPlugin: self._handle_unregister_worker_plugin,
                pl.GetPlugins: self._handle_get_plugins,
            }
        )
        self.instruction_handlers.update(
            {
                ins.WorkerAdded: self._worker_added,
                ins.WorkerRemoved: self._worker_removed,
                ins.ClientAdded: self._client_added,
                ins.ClientRemoved: self._client_removed,
                ins.ClusterRestarted: self._restarted,
            }
        )

    # ------------------------------------------------------------------ scheduler plugins

    def add(
        self, plugin: Any = None, idempotent: bool = False, name: str | None = None, **kwargs: Any
    ) -> None:
        """Keep ``plugin`` as ``name`` (by default its own), in place of one of that
        name; if one is there and ``idempotent``, do nothing."""
        if kwargs:
            raise TypeError(f"add_plugin got unexpected keyword arguments: {sorted(kwargs)}")
        if plugin is None:
            raise TypeError("add_plugin needs a plugin")
        name = plugin_name(plugin, name)
        if idempotent and name in self.plugins:
            return
        self.plugins.pop(name, None)  # (it goes last: hooks are called in this order)
        self.plugins[name] = plugin
        self._changed()

    def remove(self, plugin: Any = None, name: str | None = None) -> None:
        """Drop the scheduler plugin ``plugin`` (every name it is kept as), or ``name``."""
        if (plugin is None) == (name is None):
            raise ValueError("remove_plugin takes a plugin or a name (one of them)")
        if plugin is None:
            names = [name] if name in self.plugins else []
        else:
            names = [n for n, p in self.plugins.items() if p is plugin]
        if not names:
            raise ValueError(f"No scheduler plugin {plugin if name is None else name!r}")
        for found in names:
            del self.plugins[found]
        self._changed()

    async def start_plugins(self) -> None:
        """Start the plugins added before the scheduler started."""
        for plugin in list(self.plugins.values()):
            await logged_hook(plugin, "start", self.scheduler)

    async def close_plugins(self) -> None:
        """Tell every plugin that the scheduler closes (``before_close``, then ``close``)."""
        for hook in ("before_close", "close"):
            for plugin in list(self.plugins.values()):
                await logged_hook(plugin, hook)

    def stop(self) -> None:
        """Stop the hooks still running; remove the scheduler's directory."""
        for task in self._tasks:
            task.cancel()
        if self._directory is not None:
            forget_directory(self._directory)
            shutil.rmtree(self._directory, ignore_errors=True)

    @property
    def local_directory(self) -> str:
        """The scheduler's own directory (made when first asked for)."""
        if self._directory is None:
            self._directory = tempfile.mkdtemp(prefix="distributary-scheduler-")
        return self._directory

    async def _handle_register(self, comm: Any, msg: pl.RegisterSchedulerPlugin) -> None:
        if msg.idempotent and msg.name in self.plugins:
            return
        plugin = deserialize(msg.plugin)
        await call_hook(plugin, "start", self.scheduler)
        replaced = self.plugins.get(msg.name)
        self.add(plugin, name=msg.name)
        if replaced is not None:
            await logged_hook(replaced, "close")

    async def _handle_unregister(self, comm: Any, msg: pl.UnregisterSchedulerPlugin) -> None:
        plugin = self.plugins.get(msg.name)
        if plugin is None:
            raise ValueError(f"No scheduler plugin named {msg.name!r}")
        self.remove(name=msg.name)
        await logged_hook(plugin, "close")

    def _hooked(self, hook: str) -> list[Any]:
        """The plugins with a ``hook`` of their own."""
        return [p for p in self.plugins.values() if overrides(p, hook, SchedulerPlugin)]

    def _changed(self) -> None:
        self._watching = self._hooked("transition")
        state = self.scheduler.state
        observe(state.observers, self._transition, bool(self._watching))
        observe(state.graph_observers, self._graph_updated, bool(self._hooked("update_graph")))

    def _transition(self, key: Any, start: str, finish: str, stimulus_id: str) -> None:
        for plugin in self._watching:
            self._call(plugin, "transition", key, start, finish, stimulus_id=stimulus_id)

    def _fire(self, hook: str, *args: Any, **kwargs: Any) -> None:
        for plugin in self._hooked(hook):
            self._call(plugin, hook, *args, **kwargs)

    def _call(self, plugin: Any, hook: str, *args: Any, **kwargs: Any) -> None:
        try:
            result = getattr(plugin, hook)(*args, **kwargs)
        except Exception:
            logger.exception("Plugin %r failed in %s", plugin, hook)
            return
        if inspect.isawaitable(result):
            self._spawn(logged(result, plugin, hook))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _worker_added(self, added: ins.WorkerAdded) -> None:
        self._fire("add_worker", scheduler=self.scheduler, worker=added.address)
        if added.nanny and self._pickled[True]:
            offers = [pl.PluginAdd(p.name, p.seq, p.plugin) for p in self._pickled[True].values()]
            self._spawn(self._offer(added.nanny, offers))

    def _worker_removed(self, removed: ins.WorkerRemoved) -> None:
        self._fire(
            "remove_worker",
            scheduler=self.scheduler,
            worker=removed.address,
            stimulus_id=removed.stimulus_id,
        )

    def event_logged(self, topic: str, msg: Any) -> None:
        """An event was logged: the plugins' ``log_event`` hooks."""
        self._fire("log_event", topic, msg)

    def _client_added(self, added: ins.ClientAdded) -> None:
        self._fire("add_client", scheduler=self.scheduler, client=added.client)

    def _client_removed(self, removed: ins.ClientRemoved) -> None:
        self._fire("remove_client", scheduler=self.scheduler, client=removed.client)

    def _graph_updated(self, updated: ins.GraphUpdated) -> None:
        hooked = self._hooked("update_graph")
        annotations: dict[str, dict] = {}
        for task in updated.tasks:
            for field in _RESTRICTIONS:
                value = getattr(task, field)
                if value:
                    annotations.setdefault(field, {})[task.key] = value
        for plugin in hooked:
            self._call(
                plugin,
                "update_graph",
                self.scheduler,
                client=updated.client,
                keys=set(updated.wanted),
                tasks=[task.key for task in updated.tasks],
                annotations=annotations,
                priority={task.key: task.priority for task in updated.tasks},
                stimulus_id=updated.stimulus_id,
            )

    def _restarted(self, restarted: ins.ClusterRestarted) -> None:
        self._fire("restart", self.scheduler)

    # ------------------------------------------------------------------ worker and nanny plugins

    async def register_worker_plugin(
        self, plugin: Any, name: str | None = None, idempotent: bool = False, nanny: bool = False
    ) -> dict[str, dict]:
        """Register a worker (nanny) plugin, pickled (``bytes`` of a pickle too) or not:
        what each worker said, ``{"status": "OK"}`` or its error, by address."""
        if isinstance(plugin, bytes):
            plugin = Serialized([plugin])
        elif not isinstance(plugin, Serialized):
            plugin = serialize(plugin)
        name = plugin_name(plugin.deserialize(), name)
        request = pl.RegisterWorkerPlugin(plugin, name, idempotent=idempotent, nanny=nanny)
        return pl.statuses(await self._handle_register_worker_plugin(None, request))

    async def _handle_register_worker_plugin(
        self, comm: Any, msg: pl.RegisterWorkerPlugin
    ) -> dict[str, Ran]:
        kept = self._pickled[msg.nanny]
        if msg.idempotent and msg.name in kept:
            return {}
        kept.pop(msg.name, None)  # (it goes last: they are set up in this order)
        entry = kept[msg.name] = pl.Plugin(msg.name, next(self._seq), msg.plugin)
        return await self._broadcast(pl.PluginAdd(entry.name, entry.seq, entry.plugin), msg.nanny)

    async def _handle_unregister_worker_plugin(
        self, comm: Any, msg: pl.UnregisterWorkerPlugin
    ) -> dict[str, Ran]:
        kept = self._pickled[msg.nanny]
        if kept.pop(msg.name, None) is None:
            kind = "nanny" if msg.nanny else "worker"
            raise ValueError(f"No {kind} plugin named {msg.name!r}")
        return await self._broadcast(pl.PluginRemove(msg.name, next(self._seq)), msg.nanny)

    def _handle_get_plugins(self, comm: Any, msg: pl.GetPlugins) -> tuple[pl.Plugin, ...]:
        return self.registered(msg.nanny)

    def registered(self, nanny: bool = False) -> tuple[pl.Plugin, ...]:
        """The worker (nanny) plugins registered, in the order they were."""
        return tuple(self._pickled[nanny].values())

    async def _broadcast(self, request: Any, nanny: bool) -> dict[str, Ran]:
        """Send ``request`` to every worker (or its nanny); what each said, by worker."""
        workers = self.scheduler.state.workers.items()
        targets = {a: ws.nanny if nanny else a for a, ws in workers if ws.nanny or not nanny}
        said = await asyncio.gather(*(self._tell(target, request) for target in targets.values()))
        return {address: ran for address, ran in zip(targets, said) if ran is not None}

    async def _tell(self, address: str, request: Any) -> Ran | None:
        try:
            return await self.scheduler.pool.call(address, request)
        except OSError as exc:  # gone (or it asks again as it comes back)
            logger.info("Could not tell %s of a plugin: %r", address, exc)
            return None

    async def _offer(self, nanny: str, offers: list[pl.PluginAdd]) -> None:
        for offer in offers:
            ran = await self._tell(nanny, offer)
            if ran is not None and ran.error is not None:
                logger.warning("Nanny plugin %s failed on %s", offer.name, nanny)
