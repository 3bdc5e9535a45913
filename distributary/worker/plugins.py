"""The plugins set up on a worker (and, through :class:`PluginHost`, on a nanny).

A server starting asks the scheduler for the plugins registered (``get-plugins``) and
sets them up, in the order they were registered, before it takes any work; the
scheduler tells it of later ones (``plugin-add``, ``plugin-remove``).  Each carries the
number of its registration (see :mod:`distributary.protocol.plugins`): one acted on
already, or older than the last acted on for its name, is skipped.  Adds and removes
are handled one at a time.  A plugin whose ``setup`` raised is not kept; what its hooks
raise later is logged.  The worker's state machine tells each plugin of each
transition through one observer, attached while some plugin has a ``transition`` hook.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec

from distributary.plugins import (
    WorkerPlugin,
    call_hook,
    forget_directory,
    observe,
    overrides,
    plugin_name,
)
from distributary.protocol import plugins as pl
from distributary.protocol.errors import RemoteError
from distributary.protocol.requests import Ran
from distributary.protocol.serialize import deserialize

logger = logging.getLogger("distributary.plugins")


class PluginHost:
    """The plugins of one server, by name (``server.plugins``); ``role`` is the keyword
    their hooks get the server as (``worker``, ``nanny``)."""

    role = ""
    nanny = False  # which plugins of the scheduler's it asks for

    def __init__(self, server: Any):
        self.server = server
        self.plugins: dict[str, Any] = {}
        self.handlers = {pl.PluginAdd: self._handle_add, pl.PluginRemove: self._handle_remove}
        self._acted: dict[str, int] = {}  # name -> the last registration or removal acted on
        self._lock = asyncio.Lock()

    async def start(self, plugins: Any = (), registered: Any = None) -> None:
        """Set up ``plugins`` (given to the server) and those ``registered`` with the
        scheduler (``protocol.plugins.Plugin`` values; asked for if None; if the
        scheduler cannot be asked, those come with ``plugin-add`` later)."""
        async with self._lock:
            for plugin in plugins:
                await self._add(plugin_name(plugin), plugin)
            if registered is None:
                try:
                    registered = await self.server.pool.call(
                        self.server.scheduler_address, pl.GetPlugins(nanny=self.nanny)
                    )
                except OSError as exc:
                    logger.warning("Could not ask the scheduler for its plugins: %r", exc)
                    return
            for entry in registered:
                if not isinstance(entry, pl.Plugin):  # (as it came over the wire)
                    entry = msgspec.convert(entry, pl.Plugin)
                if self._new(entry.name, entry.seq):
                    await self._add_pickled(entry.name, entry.plugin)

    async def close(self) -> None:
        """Tear every plugin down (the server is closing)."""
        async with self._lock:
            for name in list(self.plugins):
                await self._remove(name)

    async def _handle_add(self, comm: Any, msg: pl.PluginAdd) -> Ran:
        async with self._lock:
            if not self._new(msg.name, msg.seq):
                return Ran()
            return await self._add_pickled(msg.name, msg.plugin)

    async def _handle_remove(self, comm: Any, msg: pl.PluginRemove) -> Ran:
        async with self._lock:
            if not self._new(msg.name, msg.seq):
                return Ran()
            return await self._remove(msg.name)

    def _new(self, name: str, seq: int) -> bool:
        """Whether the scheduler's registration or removal ``seq`` of ``name`` is later
        than any acted on here (it is acted on now, then)."""
        if seq <= self._acted.get(name, 0):
            return False
        self._acted[name] = seq
        return True

    async def _add_pickled(self, name: str, pickled: Any) -> Ran:
        try:
            plugin = deserialize(pickled)
        except Exception as exc:
            logger.exception("Could not unpickle the plugin %s", name)
            return Ran(error=RemoteError.of(exc).reply())
        return await self._add(name, plugin)

    async def _add(self, name: str, plugin: Any) -> Ran:
        """Set ``plugin`` up as ``name``, in place of one of that name."""
        await self._remove(name)
        try:
            await call_hook(plugin, "setup", **{self.role: self.server})
        except Exception as exc:
            logger.exception("The plugin %s failed to set up on %r", name, self.server)
            return Ran(error=RemoteError.of(exc).reply())
        self.plugins[name] = plugin
        self._changed()
        await self._set_up(plugin)
        return Ran()

    async def _set_up(self, plugin: Any) -> None:
        """After ``plugin`` is set up."""

    async def _remove(self, name: str) -> Ran:
        plugin = self.plugins.pop(name, None)
        if plugin is None:
            return Ran()
        self._changed()
        try:
            await call_hook(plugin, "teardown", **{self.role: self.server})
        except Exception as exc:
            logger.exception("The plugin %s failed to tear down on %r", name, self.server)
            return Ran(error=RemoteError.of(exc).reply())
        return Ran()

    def _changed(self) -> None:
        """After a plugin came or went."""


class WorkerPlugins(PluginHost):
    """A worker's plugins: their ``transition`` hooks observe its state machine."""

    role = "worker"

    def __init__(self, server: Any):
        super().__init__(server)
        self._watching: list[Any] = []  # the plugins with a transition hook

    async def close(self) -> None:
        """Tear every plugin down, and take the worker's directory (where files were
        uploaded) off ``sys.path``."""
        await super().close()
        if self.server.local_directory:
            forget_directory(self.server.local_directory)

    def _changed(self) -> None:
        self._watching = [
            p for p in self.plugins.values() if overrides(p, "transition", WorkerPlugin)
        ]
        observe(self.server.state.observers, self._transition, bool(self._watching))

    def _transition(self, key: Any, start: str, finish: str, stimulus_id: str) -> None:
        for plugin in self._watching:
            try:
                plugin.transition(key, start, finish)
            except Exception:
                logger.exception("The plugin %r failed in transition", plugin)
