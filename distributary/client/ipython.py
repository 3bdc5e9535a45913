"""``Client.start_ipython_workers`` and ``Client.start_ipython_scheduler``: IPython
kernels in the workers' and the scheduler's processes, and magics to use them from an
IPython session (see :mod:`distributary.utils.ipython`)."""

from __future__ import annotations

import asyncio
from typing import Any

from distributary.utils import ipython


async def _worker_kernel(dask_worker: Any) -> dict:
    return await asyncio.get_running_loop().run_in_executor(None, dask_worker.start_ipython)


def _scheduler_kernel(dask_scheduler: Any) -> dict:
    return dask_scheduler.start_ipython()


def _no_qtconsole(qtconsole: bool, qtconsole_args: Any) -> None:
    if qtconsole or qtconsole_args:
        raise NotImplementedError(
            "qtconsole= is not supported by distributary yet: connect a console with "
            "`jupyter console --existing` and the connection info returned"
        )


def _magic_names(names: Any, addresses: list[str]) -> list[str]:
    """A magic's name for each worker: ``"w_*"`` gives w_0, w_1, ...; one name is for one
    worker only; a list names each."""
    if isinstance(names, str):
        if "*" in names:
            return [names.replace("*", str(i)) for i in range(len(addresses))]
        names = [names]
    names = list(names)
    if len(names) != len(addresses):
        raise ValueError(
            f"{len(names)} magic name(s) for {len(addresses)} worker(s); "
            "use a name with '*' for one magic per worker"
        )
    return names


def start_ipython_workers(
    self: Any,
    workers: Any = None,
    magic_names: Any = False,
    qtconsole: bool = False,
    qtconsole_args: Any = None,
) -> Any:
    """Start an IPython kernel in each worker's process (or those of ``workers``), with
    ``worker`` in its namespace; ``{address: connection info}``, for ``jupyter console
    --existing`` or any Jupyter client.  With ``magic_names`` (in an IPython session),
    ``%name code`` runs code on a worker: ``"w_*"`` makes ``%w_0``, ``%w_1``, ...
    Needs ipykernel (``pip install "distributary[ipython]"``)."""
    _no_qtconsole(qtconsole, qtconsole_args)
    if self.asynchronous:
        if magic_names:
            raise NotImplementedError("magic_names= needs a blocking client")
        return self.run(_worker_kernel, workers=workers)
    info = self.run(_worker_kernel, workers=workers)
    if magic_names:
        for name, address in zip(_magic_names(magic_names, list(info)), info):
            ipython.register_magic(info[address], name)
    return info


def start_ipython_scheduler(
    self: Any,
    magic_name: Any = "scheduler_if_ipython",
    qtconsole: bool = False,
    qtconsole_args: Any = None,
) -> Any:
    """Start an IPython kernel in the scheduler's process, with ``scheduler`` in its
    namespace; its connection info.  ``magic_name`` makes a magic running code there
    (the default: ``%scheduler``, if this is an IPython session).  Needs ipykernel."""
    _no_qtconsole(qtconsole, qtconsole_args)
    if self.asynchronous:
        return self.run_on_scheduler(_scheduler_kernel)
    info = self.run_on_scheduler(_scheduler_kernel)
    if magic_name == "scheduler_if_ipython":
        magic_name = "scheduler" if ipython.in_ipython() else None
    if magic_name:
        ipython.register_magic(info, magic_name)
    return info
