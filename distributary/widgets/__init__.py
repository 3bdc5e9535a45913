"""Internal: HTML for notebooks: the ``_repr_html_`` of clients, clusters, futures and servers,
rendered from the jinja2 templates in ``widgets/templates``."""

from __future__ import annotations

import functools
from typing import Any

import jinja2


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("distributary", "widgets/templates"),
        autoescape=jinja2.select_autoescape(default=True),
    )


def render(template: str, **context: Any) -> str:
    """The HTML of ``template`` (a file name in ``widgets/templates``) with ``context``;
    every value is HTML-escaped unless marked safe."""
    return _environment().get_template(template).render(**context)
