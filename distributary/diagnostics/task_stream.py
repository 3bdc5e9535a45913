"""``get_task_stream``: the task stream of a block of code, as a context manager."""

from __future__ import annotations

import time
from typing import Any

from distributary.client.diagnostics import check_plot
from distributary.client.registry import default_client


class get_task_stream:  # noqa: N801  (dask.distributed's name)
    """Collect the records of the tasks run while the block runs.

    >>> with get_task_stream() as ts:
    ...     x.compute()
    >>> ts.data
    [{'key': ..., 'worker': ..., 'startstops': ..., ...}]

    Works as ``with`` and, with an asynchronous client, ``async with``.  ``client``: the
    client asking (the default one when None).  ``plot=True`` (or ``"save"``, to
    ``filename`` too): ``ts.figure`` is the chart, as
    :meth:`Client.get_task_stream <distributary.Client.get_task_stream>` draws it.
    The records are those of the tasks that finished after the block began.
    """

    def __init__(
        self, client: Any = None, plot: bool | str = False, filename: str = "task-stream.html"
    ):
        self.client = client
        self.plot = check_plot(plot)
        self.filename = filename
        self.data: list[dict] = []
        self.figure: Any = None
        self.start = 0.0

    def _client(self) -> Any:
        if self.client is None:
            self.client = default_client()
        return self.client

    def __enter__(self) -> get_task_stream:
        self._client()
        self.start = time.time()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        client = self._client()
        if client.asynchronous:
            raise TypeError("get_task_stream with an asynchronous client: use 'async with'")
        self._keep(client.get_task_stream(**self._request()))

    async def __aenter__(self) -> get_task_stream:
        return self.__enter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        client = self._client()
        if not client.asynchronous:
            raise TypeError("async with get_task_stream needs an asynchronous client: use 'with'")
        self._keep(await client.get_task_stream(**self._request()))

    def _request(self) -> dict:
        return {"start": self.start, "plot": self.plot, "filename": self.filename}

    def _keep(self, result: Any) -> None:
        if self.plot:
            self.data, self.figure = result
        else:
            self.data = result
