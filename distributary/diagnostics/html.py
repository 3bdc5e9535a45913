"""The HTML of the diagnostics: the task stream chart, the flame graph of a profile and
the performance report, from one renderer.

A page is one self-contained file: ``templates/page.html.j2`` with the stylesheet and
the script (``templates/diagnostics.css``, ``templates/diagnostics.js``) inlined and the
data of each chart as JSON beside it; the browser draws the charts (SVG), with no
library and no network.  A page is a list of sections: ``summary`` and ``bandwidth``
(plain HTML), ``task-stream`` and ``flame-graph`` (charts).
"""

from __future__ import annotations

import functools
import html
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

import jinja2
from dask.utils import format_bytes, format_time, key_split
from markupsafe import Markup

from distributary import __version__

_ACTIONS = ("compute", "transfer", "disk-read", "disk-write")
_FIGURE_HEIGHT = 480  # pixels of a figure shown in a notebook


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("distributary", "diagnostics/templates"),
        autoescape=True,
        keep_trailing_newline=True,
    )


@functools.cache
def _asset(name: str) -> Markup:
    text = resources.files("distributary").joinpath("diagnostics", "templates", name)
    return Markup(text.read_text(encoding="utf-8"))


def _script_json(data: Any) -> Markup:
    """``data`` as JSON that is safe inside a ``<script>`` element."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)


def page(title: str, sections: list[dict]) -> str:
    """The HTML page ``title`` with these sections, each a dict of ``kind``, ``title``
    and ``data`` (see the module's docstring), and optionally a ``note``."""
    shown = []
    for i, section in enumerate(sections):
        shown.append(
            {
                **section,
                "id": f"{section['kind']}-{i}",
                "json": _script_json(section["data"])
                if section["kind"] in ("task-stream", "flame-graph")
                else "",
            }
        )
    template = _environment().get_template("page.html.j2")
    return template.render(
        title=title,
        sections=shown,
        css=_asset("diagnostics.css"),
        js=_asset("diagnostics.js"),
        version=__version__,
    )


class Figure:
    """A chart as one self-contained HTML page (it opens offline): ``html`` is the page,
    ``save(filename)`` writes it; shown inline in a notebook."""

    def __init__(self, title: str, html: str):
        self.title = title
        self.html = html

    def save(self, filename: str | os.PathLike) -> str:
        """Write the page to ``filename``; its absolute path."""
        return write(filename, self.html)

    def _repr_html_(self) -> str:
        return (
            f'<iframe srcdoc="{html.escape(self.html, quote=True)}" '
            f'style="width: 100%; height: {_FIGURE_HEIGHT}px; border: none" '
            f'title="{html.escape(self.title)}"></iframe>'
        )

    def __repr__(self) -> str:
        return f"<Figure {self.title!r}: {len(self.html)} characters of HTML>"


def write(filename: str | os.PathLike, text: str) -> str:
    """Write ``text`` to the local file ``filename``; its absolute path."""
    path = os.path.abspath(os.fspath(filename))
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


# ---------------------------------------------------------------------- sections


def task_stream_section(records: Iterable[Mapping], title: str = "Task Stream") -> dict:
    """The chart of these task records: a row per worker thread, a bar per phase."""
    rows: dict[tuple, int] = {}
    workers: dict[str, int] = {}
    keys: dict[str, int] = {}
    prefixes: dict[str, int] = {}
    phases = []
    for record in records:
        worker = record["worker"]
        row = rows.setdefault((worker, record["thread"]), len(rows))
        key = record["key"]
        text = key if isinstance(key, str) else str(key)
        k = keys.setdefault(text, len(keys))
        p = prefixes.setdefault(key_split(key), len(prefixes))
        ok = 1 if record.get("status", "OK") == "OK" else 0
        for phase in record["startstops"]:
            action = phase["action"]
            source = phase.get("source")
            s = workers.setdefault(source, len(workers)) if source else -1
            a = _ACTIONS.index(action) if action in _ACTIONS else 0
            phases.append([row, phase["start"], phase["stop"], a, k, p, ok, s])
    t0 = min((ph[1] for ph in phases), default=0.0)
    t1 = max((ph[2] for ph in phases), default=0.0)
    for ph in phases:
        ph[1] = round(ph[1] - t0, 6)
        ph[2] = round(ph[2] - t0, 6)
    data = {
        "t0": t0,
        "t1": t1,
        "rows": _row_labels(rows),
        "workers": list(workers),
        "keys": list(keys),
        "prefixes": list(prefixes),
        "actions": list(_ACTIONS),
        "rects": phases,
    }
    return {"kind": "task-stream", "title": title, "data": data}


def _row_labels(rows: Mapping[tuple, int]) -> list[str]:
    """``worker #n`` for the n-th thread of each worker, in the order of ``rows``."""
    threads: defaultdict[str, dict] = defaultdict(dict)
    for worker, thread in sorted(rows, key=rows.__getitem__):
        threads[worker].setdefault(thread, len(threads[worker]))
    labels = []
    for worker, thread in sorted(rows, key=rows.__getitem__):
        short = worker.split("://", 1)[-1]
        labels.append(f"{short} #{threads[worker][thread]}")
    return labels


def flame_graph_section(profile: Mapping, title: str = "Profile", note: str = "") -> dict:
    """The flame graph of a profile (the nested dict of :mod:`.profile`)."""
    return {"kind": "flame-graph", "title": title, "data": _compact(profile), "note": note}


def _compact(profile: Mapping) -> list:
    """A profile as nested lists: ``[name, filename, line number, line, count, children]``,
    the children most sampled first."""

    def entry(node: Mapping) -> list:
        d = node["description"]
        return [d["name"], d["filename"], d["line_number"], d["line"], node["count"], []]

    root = entry(profile)
    todo = [(profile, root)]
    while todo:  # (iterative: stacks may be deep)
        node, out = todo.pop()
        children = sorted(node["children"].values(), key=lambda c: -c["count"])
        for child in children:
            compact = entry(child)
            out[5].append(compact)
            todo.append((child, compact))
    return root


def bandwidth_section(transfers: Iterable[Mapping], title: str = "Bandwidth") -> dict:
    """A table of the data moved between each pair of workers: transfers, keys, bytes,
    time and bandwidth."""
    pairs: dict[tuple[str, str], list] = {}
    for t in transfers:
        totals = pairs.setdefault((t["source"], t["destination"]), [0, 0, 0, 0.0])
        totals[0] += 1
        totals[1] += t["keys"]
        totals[2] += t["nbytes"]
        totals[3] += max(t["stop"] - t["start"], 0.0)
    rows = []
    for (source, destination), (count, nkeys, nbytes, seconds) in sorted(pairs.items()):
        rows.append(
            {
                "source": source,
                "destination": destination,
                "count": count,
                "nkeys": nkeys,
                "nbytes": nbytes,
                "seconds": seconds,
                "bytes_text": format_bytes(nbytes),
                "time_text": format_time(seconds),
                "bandwidth_text": f"{format_bytes(int(nbytes / seconds))}/s" if seconds else "",
            }
        )
    return {"kind": "bandwidth", "title": title, "data": {"rows": rows}}


def summary_section(items: list[tuple[str, Any]], code: str = "", title: str = "Summary") -> dict:
    """A list of ``(label, value)`` pairs, and the code that ran."""
    return {"kind": "summary", "title": title, "data": {"items": items, "code": code}}


# ---------------------------------------------------------------------- figures


def task_stream_figure(records: Iterable[Mapping], title: str = "Task Stream") -> Figure:
    """The task stream chart of ``records``, as a page of its own."""
    return Figure(title, page(title, [task_stream_section(records, title)]))


def profile_figure(profile: Mapping, title: str = "Profile") -> Figure:
    """The flame graph of ``profile``, as a page of its own."""
    return Figure(title, page(title, [flame_graph_section(profile, title)]))
