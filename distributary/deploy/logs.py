"""What ``cluster.get_logs()`` returns: the logs of the cluster manager, the scheduler
and each worker, as text that notebooks show folded."""

from __future__ import annotations

import html


class Log(str):
    """The log of one part of the cluster: its lines, oldest first."""

    def _repr_html_(self) -> str:
        return f'<pre style="white-space: pre-wrap; font-size: 10pt">{html.escape(self)}</pre>'


class Logs(dict):
    """The logs of a cluster by part: ``"Cluster"``, ``"Scheduler"``, worker addresses."""

    def _repr_html_(self) -> str:
        parts = [
            f"<details><summary>{html.escape(str(name))}</summary>{Log(text)._repr_html_()}"
            "</details>"
            for name, text in sorted(self.items(), key=lambda item: str(item[0]))
        ]
        return "\n".join(parts)


def log_text(records: tuple | list) -> Log:
    """A server's log records, ``(level, message)`` newest first, as one text."""
    return Log("\n".join(message for _, message in reversed(records)))
