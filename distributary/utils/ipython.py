"""IPython kernels inside a worker or the scheduler, and magics that talk to them.

``start_kernel(namespace, ip)`` starts an IPython kernel on a thread of this process,
with ``namespace`` in it (``worker`` or ``scheduler``), and returns its connection info,
which any Jupyter client can connect with (``jupyter console --existing``, or the
magics below).  One kernel per server: asked again, it gives the same.  The kernel
leaves this process's ``sys.stdout`` and ``sys.stderr`` alone.  It needs the optional
``ipykernel`` and ``jupyter_client`` (``pip install "distributary[ipython]"``).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any

_STARTED_WITHIN = 30.0  # seconds for a kernel to start


def _require() -> None:
    try:
        import ipykernel  # noqa: F401
        import jupyter_client  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            'IPython kernels need ipykernel and jupyter_client: pip install "distributary[ipython]"'
        ) from exc


def start_kernel(namespace: dict[str, Any], ip: str) -> dict[str, Any]:
    """Start an IPython kernel on a thread of its own, listening on ``ip``, with
    ``namespace`` in its user namespace; its connection info (JSON-able)."""
    _require()
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp()
    app.init_signal = lambda: None  # (signals belong to the main thread)
    app.log_connection_info = lambda: None
    started = threading.Event()
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            asyncio.set_event_loop(asyncio.new_event_loop())
            kept = sys.stdout, sys.stderr, sys.displayhook, sys.excepthook
            try:
                app.initialize([f"--ip={ip}", "--IPKernelApp.parent_handle=-1", "--quiet"])
            finally:
                sys.stdout, sys.stderr, sys.displayhook, sys.excepthook = kept
            app.kernel.shell.user_ns.update(namespace)
        except BaseException as exc:
            failed.append(exc)
            return
        finally:
            started.set()
        app.start()

    threading.Thread(target=serve, name="distributary-ipython", daemon=True).start()
    if not started.wait(_STARTED_WITHIN):
        raise TimeoutError(f"The IPython kernel did not start within {_STARTED_WITHIN:.0f} s")
    if failed:
        raise failed[0]
    info = dict(app.get_connection_info())
    if isinstance(info.get("key"), bytes):
        info["key"] = info["key"].decode()
    return info


def register_magic(info: dict[str, Any], name: str) -> None:
    """Make ``%name code`` (and ``%%name`` cells) in this IPython session run the code
    in the kernel of ``info``, showing what it prints and gives."""
    from IPython import get_ipython
    from jupyter_client import BlockingKernelClient

    shell = get_ipython()
    if shell is None:
        raise ValueError(f"Magic %{name} needs an IPython session, and this is none")
    client = BlockingKernelClient()
    client.load_connection_info(info)
    client.start_channels()

    def remote(line: str, cell: str | None = None) -> None:
        client.execute_interactive(line if cell is None else cell, output_hook=_show)

    shell.register_magic_function(remote, magic_kind="line_cell", magic_name=name)


def _show(msg: dict) -> None:
    """Show here what the remote kernel printed, gave or raised."""
    kind, content = msg["msg_type"], msg["content"]
    if kind == "stream":
        print(content["text"], end="", file=sys.stderr if content["name"] == "stderr" else None)
    elif kind in ("execute_result", "display_data"):
        print(content["data"].get("text/plain", ""))
    elif kind == "error":
        print("\n".join(content["traceback"]), file=sys.stderr)


def in_ipython() -> bool:
    """Whether this process runs an IPython session (so that magics can be made)."""
    ipython = sys.modules.get("IPython")
    return ipython is not None and ipython.get_ipython() is not None
