"""Internal: HTML for notebooks: the ``_repr_html_`` of clients, clusters, futures and servers,
rendered from the jinja2 templates in ``widgets/templates``."""

from __future__ import annotations

import functools
from typing import Any

import jinja2
from dask.utils import format_bytes


@functools.cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("distributary", "widgets/templates"),
        autoescape=jinja2.select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["bytes"] = _memory
    return environment


def _memory(nbytes: Any) -> str:
    """A number of bytes as people read it (``"4.00 GiB"``); none or 0: "no limit"."""
    return format_bytes(int(nbytes)) if nbytes else "no limit"


def render(template: str, **context: Any) -> str:
    """The HTML of ``template`` (a file name in ``widgets/templates``) with ``context``;
    every value is HTML-escaped unless marked safe."""
    return _environment().get_template(template).render(**context)
