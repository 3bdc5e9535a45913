"""The plugins set up on a nanny: a nanny starting sets up those registered before it
starts its worker process (:class:`~distributary.worker.plugins.PluginHost` does the
rest)."""

from __future__ import annotations

import logging
from typing import Any

from distributary.worker.plugins import PluginHost

logger = logging.getLogger("distributary.plugins")


class NannyPlugins(PluginHost):
    """A nanny's plugins: one with ``restart = True`` restarts the worker process."""

    role = "nanny"
    nanny = True

    async def _set_up(self, plugin: Any) -> None:
        if not getattr(plugin, "restart", False) or self.server.process is None:
            return
        if await self.server.restart() != "OK":
            logger.warning("%r: the worker process did not restart in time", self.server)
