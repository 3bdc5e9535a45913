"""Worker and scheduler specs: ``{"cls": a class or its dotted name, "options": {...},
"group": [name suffixes]}``, checked, resolved, and named."""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

_SPEC_KEYS = frozenset({"cls", "options", "group"})


def check_spec(spec: Any, what: str) -> dict:
    """``spec`` checked: a dict with ``cls`` (a class or its dotted name), ``options`` (a
    dict of keywords) and perhaps ``group`` (name suffixes); errors name ``what``."""
    if not isinstance(spec, Mapping) or "cls" not in spec:
        raise TypeError(
            f"The {what} spec must be a dict like {{'cls': Worker, 'options': {{...}}}}, "
            f"not {spec!r}"
        )
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise TypeError(f"The {what} spec has unknown entries {unknown}: only cls, options, group")
    try:
        resolve(spec["cls"])
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        raise type(exc)(f"The {what} spec: {exc}") from None
    options = spec.get("options", {})
    if not isinstance(options, Mapping):
        raise TypeError(f"The options of the {what} spec must be a dict, not {options!r}")
    group = spec.get("group")
    if group is not None and (isinstance(group, str) or not isinstance(group, Iterable)):
        raise TypeError(f"The group of the {what} spec must be a list of suffixes, not {group!r}")
    return copy.copy(dict(spec))


def resolve(cls: Any) -> Callable:
    """A spec's class, given or by its dotted name."""
    if isinstance(cls, str):
        module, _, attribute = cls.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ImportError(f"unknown class {cls!r} ({exc})") from None
    if not callable(cls):
        raise TypeError(f"'cls' must be a class, not {cls!r}")
    return cls


def member_names(spec: Mapping) -> list:
    """The names of the workers of these specs: each name, or name + suffix per group."""
    names = []
    for name, each in spec.items():
        if each.get("group"):
            names.extend(f"{name}{suffix}" for suffix in each["group"])
        else:
            names.append(name)
    return names


def spec_names(spec: Mapping, workers: Mapping[str, dict], given: Iterable) -> list:
    """The names in ``spec`` of the workers ``given`` by name, group member name or
    address (``workers``: the scheduler's, by address)."""
    by_member = {}
    for name, each in spec.items():
        for member in member_names({name: each}):
            by_member[member] = name
            by_member[str(member)] = name
    for address, info in workers.items():
        if info["name"] in by_member:
            by_member[address] = by_member[info["name"]]
    found = []
    for worker in given:
        key = by_member.get(worker, by_member.get(str(worker)))
        if key is not None and key not in found:
            found.append(key)
    return found


def whole(n: Any, what: str) -> int:
    """``n`` as an int; ValueError naming ``what`` unless it is a whole number >= 0."""
    if isinstance(n, bool) or not isinstance(n, int | float) or n < 0 or n != int(n):
        raise ValueError(f"{what} must be a whole number at least 0, not {n!r}")
    return int(n)
