"""The versions of Python and of the packages that client, scheduler and workers must
agree on, and the table of those that do not.

As in dask.distributed, a server's versions are ``{"host": {...}, "packages":
{...}}``: the platform, and the version of Python and of each package (None where it
is not installed).  The scheduler never unpickles user data, so only the packages of
:data:`SCHEDULER_RELEVANT` are compared with its own.
"""

from __future__ import annotations

import functools
import os
import platform
import struct
import sys
from collections.abc import Iterable
from typing import Any

import distributary

REQUIRED_PACKAGES = ("dask", "distributary", "msgpack", "msgspec", "cloudpickle", "toolz")
OPTIONAL_PACKAGES = ("numpy", "pandas", "lz4")
SCHEDULER_RELEVANT = frozenset({"python", *REQUIRED_PACKAGES, "lz4"})


class VersionMismatchWarning(Warning):
    """Client, scheduler and workers run different versions of packages they share."""


def get_versions(packages: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """This process's platform and versions, of the packages checked and of ``packages``."""
    names = (*REQUIRED_PACKAGES, *OPTIONAL_PACKAGES, *packages)
    return {
        "host": host_info(),
        "packages": {"python": _python(), **{name: package_version(name) for name in names}},
    }


def host_info() -> dict[str, Any]:
    """The Python build and the platform this process runs on."""
    uname = platform.uname()
    return {
        "python": _python(),
        "python-bits": struct.calcsize("P") * 8,
        "OS": uname.system,
        "OS-release": uname.release,
        "machine": uname.machine,
        "processor": uname.processor,
        "byteorder": sys.byteorder,
        "LC_ALL": os.environ.get("LC_ALL", "None"),
        "LANG": os.environ.get("LANG", "None"),
    }


@functools.cache
def package_version(name: str) -> str | None:
    """The installed version of the package ``name`` (None if it is not installed);
    distributary's is that of the code running."""
    if name == "distributary":
        return distributary.__version__
    import importlib.metadata  # (here: it costs every server process ~10 ms to load)

    try:
        return importlib.metadata.version(name)
    except Exception:  # not installed, or metadata unreadable
        return None


def _python() -> str:
    return ".".join(map(str, sys.version_info))


def mismatches(client: dict, scheduler: dict, workers: dict[str, dict]) -> list[tuple]:
    """``(package, client's, scheduler's, workers')`` for each package whose versions
    differ (the workers' as one version if they agree, else the set of them); "MISSING"
    where a side did not say."""
    packages = {**client["packages"], **scheduler["packages"]}
    for versions in workers.values():
        packages.update(versions["packages"])
    rows = []
    for name in sorted(packages):
        ours = client["packages"].get(name, "MISSING")
        theirs = scheduler["packages"].get(name, "MISSING")
        on_workers = {versions["packages"].get(name, "MISSING") for versions in workers.values()}
        seen = {ours, *on_workers} | ({theirs} if name in SCHEDULER_RELEVANT else set())
        if len(seen) > 1:
            shown = next(iter(on_workers)) if len(on_workers) == 1 else on_workers or None
            rows.append((name, ours, theirs, shown))
    return rows


def mismatch_message(rows: list[tuple]) -> str:
    """The mismatches as a table, headed "Mismatched versions found"."""
    table = [("Package", "Client", "Scheduler", "Workers")]
    table += [tuple(_text(value) for value in row) for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines = [rule]
    for index, row in enumerate(table):
        lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |")
        if index == 0:
            lines.append(rule)
    lines.append(rule)
    return "Mismatched versions found\n\n" + "\n".join(lines)


def _text(value: Any) -> str:
    if isinstance(value, set):
        return "{" + ", ".join(sorted(map(str, value))) + "}"
    return str(value)
