"""distributary: a fast distributed task scheduler with the dask.distributed API.

Change ``from dask.distributed import ...`` to ``from distributary import ...``.
"""

from distributary import config  # noqa: F401  (registers the configuration defaults)
from distributary.client import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    Client,
    Future,
    as_completed,
    default_client,
    fire_and_forget,
    futures_of,
    wait,
)
from distributary.deploy import LocalCluster
from distributary.exceptions import (
    CancelledError,
    FutureCancelledError,
    KilledWorker,
    Reschedule,
    TimeoutError,
)
from distributary.nanny import Nanny
from distributary.scheduler.server import Scheduler
from distributary.worker.context import get_worker, secede
from distributary.worker.server import Worker


def get_client() -> Client:
    """The client to use here: the default client of this process."""
    return default_client()


__version__ = "0.1.0"

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "CancelledError",
    "Client",
    "Future",
    "FutureCancelledError",
    "KilledWorker",
    "LocalCluster",
    "Nanny",
    "Reschedule",
    "Scheduler",
    "TimeoutError",
    "Worker",
    "as_completed",
    "default_client",
    "fire_and_forget",
    "futures_of",
    "get_client",
    "get_worker",
    "secede",
    "wait",
]
