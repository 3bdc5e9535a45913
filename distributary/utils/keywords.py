"""The keywords of dask.distributed's constructors that distributary does not act on.

A constructor takes the keywords it honours by name; the rest arrive in its ``**kwargs``
and go through :func:`check_keywords`: a keyword documented but not supported yet is a
``NotImplementedError`` naming it when given anything but its default, one without
effect here (``loop``: distributary runs its own) is accepted, and any other keyword is
a ``TypeError`` naming it, as Python says of a function's unknown keyword.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

# Documented by dask.distributed, not supported yet: keyword -> its default there.
WORKER_NOT_YET: Mapping[str, Any] = {
    "services": None,
    "service_ports": None,
    "service_kwargs": None,
    "preload": None,
    "preload_argv": None,
    "contact_address": None,
    "extensions": None,
    "metrics": None,
    "startup_information": None,
    "low_level_profiler": False,
    "profile_cycle_interval": None,
    "reconnect": True,
}
NANNY_NOT_YET: Mapping[str, Any] = {**WORKER_NOT_YET, "quiet": False, "listen_address": None}
LOCAL_CLUSTER_NOT_YET: Mapping[str, Any] = {
    "diagnostics_port": None,
    "services": None,
    "worker_services": None,
    "service_kwargs": None,
}
SCHEDULER_NOT_YET: Mapping[str, Any] = {
    "services": None,
    "service_kwargs": None,
    "extensions": None,
    "preload": None,
    "preload_argv": None,
}
CLIENT_NOT_YET: Mapping[str, Any] = {
    "serializers": None,
    "deserializers": None,
    "extensions": None,
}
# Accepted and without effect: the loop (each server runs on the loop it is started
# in), a worker's dashboard switch (a worker always serves /metrics and /health) and the
# timings of loops distributary has not.
NO_EFFECT = frozenset(
    {
        "loop",
        "dashboard",
        "dashboard_address",
        "delete_interval",
        "synchronize_worker_interval",
    }
)


def check_keywords(
    owner: str,
    kwargs: Mapping[str, Any],
    not_yet: Mapping[str, Any],
    no_effect: Collection[str] = NO_EFFECT,
) -> None:
    """Refuse what ``owner`` cannot honour in ``kwargs`` (see the module's docstring)."""
    for name, value in kwargs.items():
        if name in no_effect:
            continue
        if name not in not_yet:
            raise TypeError(f"{owner}() got an unexpected keyword argument {name!r}")
        if _given(value, not_yet[name]):
            raise NotImplementedError(f"{owner}({name}=...) is not supported by distributary yet")


def _given(value: Any, default: Any) -> bool:
    """Whether ``value`` asks for something: not the default, None or empty."""
    if value is None or value is default:
        return False
    if isinstance(value, list | tuple | dict | set | str) and not value:
        return False
    return not (type(value) is type(default) and value == default)


def check_client_keywords(address: Any, scheduler_file: Any, direct: Any, kwargs: dict) -> None:
    """Refuse the keywords a Client cannot honour; ``kwargs`` are those for its
    LocalCluster (taken out of them: those that are the Client's own)."""
    if direct is False:
        raise NotImplementedError(
            "Client(direct_to_workers=False) is not supported by distributary yet: data "
            "always goes straight between the client and the workers"
        )
    given = {name: kwargs.pop(name) for name in CLIENT_NOT_YET if name in kwargs}
    check_keywords("Client", given, CLIENT_NOT_YET)
    if kwargs and (address is not None or scheduler_file is not None):
        raise TypeError(
            f"Client() got keywords for a LocalCluster ({', '.join(map(repr, kwargs))}) "
            "but connects to a running scheduler"
        )
