"""Reading the API reference copied into tests/spec: the members each class documents,
and the check that ours has each with every parameter the reference names."""

from __future__ import annotations

import inspect
import pathlib
import re

SPEC = pathlib.Path(__file__).parent / "spec"

_METHOD = re.compile(r"^([a-z_]\w*)\((.*)\)(\[source\])?$")
_PROPERTY = re.compile(r"^property (\w+)$")
_ATTRIBUTE = re.compile(r"^([a-z_]+)$")
_NOT_PARAMETERS = {"", "self", "…", "args", "kwargs"}


def documented_members(
    filename: str, classes: dict[str, type | None], attributes: bool = False
) -> list[tuple[type, str, list[str] | None]]:
    """``(our class, name, parameter names)`` for each member documented in
    ``tests/spec/filename`` under a line starting with a key of ``classes`` (a None
    class ends the part read); None parameters for a property (``property x``) or, with
    ``attributes``, a lowercase name alone on its line (not one under "See also")."""
    members = []
    cls = None
    previous = ""
    for line in (SPEC / filename).read_text().splitlines():
        for start, ours in classes.items():
            if line.startswith(start):
                cls = ours
        if cls is None or not line.strip():
            continue
        if match := _METHOD.match(line):
            name, params = match.group(1), match.group(2)
            names = [
                p.strip().split("=")[0].lstrip("*\\")
                for p in params.replace("[", ",").replace("]", "").split(",")
            ]
            members.append((cls, name, [n for n in names if n not in _NOT_PARAMETERS]))
        elif (
            (match := _PROPERTY.match(line))
            or attributes
            and (match := _ATTRIBUTE.match(line))
            and previous != "See also"
        ):
            members.append((cls, match.group(1), None))
        previous = line
    return members


def ids(members: list) -> list[str]:
    """Test ids: ``Class.member``."""
    return [f"{cls.__name__}.{name}" for cls, name, _ in members]


def check_member(cls: type, name: str, params: list[str] | None) -> None:
    """``cls`` has the member, a property where ``params`` is None, else a method with
    a docstring taking each of ``params`` by name."""
    member = inspect.getattr_static(cls, name, None)
    assert member is not None, f"{cls.__name__}.{name} is missing"
    if params is None:
        assert isinstance(member, property), f"{cls.__name__}.{name} is not a property"
        return
    signature = inspect.signature(getattr(cls, name))
    missing = [p for p in params if p not in signature.parameters]
    assert not missing, f"{cls.__name__}.{name} lacks {missing}"
    assert getattr(cls, name).__doc__, f"{cls.__name__}.{name} has no docstring"
