"""The scheduler's requests for locks, multi-locks and semaphores.

Each blocking acquire is one request, answered when the lock (or lease) is taken or
when its ``timeout`` passes (``0``: only if it is free at once; ``None``: no limit).
``holder`` is the Lock or MultiLock object asking, ``client`` the client it talks
through: what a holder has is freed when its client leaves the scheduler.
"""

from __future__ import annotations

from typing import Any, ClassVar

from distributary.protocol.message import Key
from distributary.protocol.requests import Request

# ---------------------------------------------------------------------- Lock


class LockAcquire(Request):
    """Take the lock ``name`` for ``holder``: True once taken, False after ``timeout``."""

    op: ClassVar[str] = "lock-acquire"
    reply_type: ClassVar[Any] = bool

    name: Key
    holder: str
    client: str
    timeout: float | None = None


class LockRelease(Request):
    """Free the lock ``name`` that ``holder`` has: False if it did not have it."""

    op: ClassVar[str] = "lock-release"
    reply_type: ClassVar[Any] = bool

    name: Key
    holder: str


class LockLocked(Request):
    """Whether anyone has the lock ``name``."""

    op: ClassVar[str] = "lock-locked"
    reply_type: ClassVar[Any] = bool

    name: Key


# ---------------------------------------------------------------------- MultiLock


class MultiLockAcquire(Request):
    """Take ``num_locks`` (``None``: all) of the multi-locks ``names`` at once for
    ``holder``: True once taken, False after ``timeout``."""

    op: ClassVar[str] = "multi-lock-acquire"
    reply_type: ClassVar[Any] = bool

    names: tuple[Key, ...]
    holder: str
    client: str
    num_locks: int | None = None
    timeout: float | None = None


class MultiLockRelease(Request):
    """Free every multi-lock that ``holder`` has: False if it had none."""

    op: ClassVar[str] = "multi-lock-release"
    reply_type: ClassVar[Any] = bool

    holder: str


# ---------------------------------------------------------------------- Semaphore


class SemaphoreRegister(Request):
    """Make the semaphore ``name`` with ``max_leases`` (ValueError if it exists with
    another number)."""

    op: ClassVar[str] = "semaphore-register"
    reply_type: ClassVar[Any] = None

    name: Key
    max_leases: int


class SemaphoreAcquire(Request):
    """Take the lease ``lease_id`` of the semaphore ``name`` (made with ``max_leases``
    if new): True once taken, False after ``timeout``.  The lease is freed if it is not
    refreshed for ``lease_timeout`` seconds (``None``: never)."""

    op: ClassVar[str] = "semaphore-acquire"
    reply_type: ClassVar[Any] = bool

    name: Key
    max_leases: int
    lease_id: str
    client: str
    timeout: float | None = None
    lease_timeout: float | None = None


class SemaphoreRelease(Request):
    """Free the lease ``lease_id`` of the semaphore ``name``: False if it was not held
    (released already, or timed out)."""

    op: ClassVar[str] = "semaphore-release"
    reply_type: ClassVar[Any] = bool

    name: Key
    lease_id: str


class SemaphoreRefresh(Request):
    """The leases ``lease_ids`` of the semaphore ``name`` are still in use."""

    op: ClassVar[str] = "semaphore-refresh"
    reply_type: ClassVar[Any] = None

    name: Key
    lease_ids: tuple[str, ...]


class SemaphoreValue(Request):
    """The number of leases of the semaphore ``name`` held now."""

    op: ClassVar[str] = "semaphore-value"
    reply_type: ClassVar[Any] = int

    name: Key


class SemaphoreClose(Request):
    """Forget the semaphore ``name``: its leases go, its waiting acquires get False."""

    op: ClassVar[str] = "semaphore-close"
    reply_type: ClassVar[Any] = None

    name: Key
