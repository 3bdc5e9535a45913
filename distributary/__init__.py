"""distributary: a fast distributed task scheduler with the dask.distributed API.

Change ``from dask.distributed import ...`` to ``from distributary import ...``.
"""

import importlib

from distributary import config  # noqa: F401  (registers the configuration defaults)

# The public API, in one list: each public name and the module that defines it,
# imported on first use (a worker process imports the worker, not the client and the
# deployment code).  Every other module is internal.
_EXPORTS = {
    "ALL_COMPLETED": "distributary.client.waiting",
    "FIRST_COMPLETED": "distributary.client.waiting",
    "FIRST_EXCEPTION": "distributary.client.waiting",
    "Client": "distributary.client.client",
    "Future": "distributary.client.future",
    "as_completed": "distributary.client.waiting",
    "default_client": "distributary.client.registry",
    "fire_and_forget": "distributary.client.waiting",
    "futures_of": "distributary.client.structures",
    "progress": "distributary.diagnostics.progressbar",
    "wait": "distributary.client.waiting",
    "get_client": "distributary.client.in_task",
    "worker_client": "distributary.client.in_task",
    "Lock": "distributary.client.locks",
    "MultiLock": "distributary.client.locks",
    "Semaphore": "distributary.client.semaphore",
    "Queue": "distributary.client.queues",
    "Variable": "distributary.client.variables",
    "Event": "distributary.client.named_events",
    "Pub": "distributary.client.pubsub",
    "Sub": "distributary.client.pubsub",
    "LocalCluster": "distributary.deploy.local",
    "SpecCluster": "distributary.deploy.spec",
    "Adaptive": "distributary.deploy.adaptive",
    "SSHCluster": "distributary.deploy.ssh",
    "get_task_stream": "distributary.diagnostics.task_stream",
    "performance_report": "distributary.diagnostics.report",
    "CancelledError": "distributary.exceptions",
    "FutureCancelledError": "distributary.exceptions",
    "KilledWorker": "distributary.exceptions",
    "Reschedule": "distributary.exceptions",
    "TimeoutError": "distributary.exceptions",
    "Nanny": "distributary.nanny.server",
    "NannyPlugin": "distributary.plugins",
    "SchedulerPlugin": "distributary.plugins",
    "UploadFile": "distributary.plugins",
    "WorkerPlugin": "distributary.plugins",
    "Scheduler": "distributary.scheduler.server",
    "Security": "distributary.security",
    "get_worker": "distributary.worker.context",
    "secede": "distributary.worker.context",
    "rejoin": "distributary.worker.context",
    "Worker": "distributary.worker.server",
}


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distributary' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__version__ = "0.1.0"

__all__ = list(_EXPORTS)
