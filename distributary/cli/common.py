"""What the commands share: option types, logging, and running nodes until a signal.

A command builds its nodes (a Scheduler, or Workers and Nannies) and hands them to
:func:`serve`, which starts them, logs where they listen, and waits until they have
all closed by themselves or SIGINT/SIGTERM arrives; then it closes them.  A second
signal while closing, or a close that takes too long, kills the worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import click
from dask.utils import parse_bytes, parse_timedelta

from distributary.node import ServerNode

T = TypeVar("T")

logger = logging.getLogger("distributary.cli")

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DEFAULT_SCHEDULER_PORT = 8786
CLOSE_TIMEOUT = 30.0  # seconds for all nodes to close before their processes are killed
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


# ---------------------------------------------------------------------- option types


class Duration(click.ParamType):
    """A time span such as ``30s``, ``5 minutes`` or ``2.5`` (seconds), as seconds."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            return float(parse_timedelta(value, default="s"))
        except (ValueError, KeyError):  # negative durations are ValueErrors too
            self.fail(f"{value!r} is not a duration like 30s, '5 minutes' or 2.5", param, ctx)


class MemoryLimit(click.ParamType):
    """``auto``, bytes (``4GB``, ``4e9``), a fraction of the machine's memory, or 0."""

    name = "memory"

    def convert(self, value: Any, param: Any, ctx: Any) -> str | int | float:
        if isinstance(value, int | float):
            return value
        text = value.strip()
        if text.lower() == "auto":
            return "auto"
        for kind in (int, float):
            try:
                number = kind(text)
            except ValueError:
                continue
            if number < 0:
                self.fail(f"{value!r} is negative", param, ctx)
            return number
        try:
            parse_bytes(text)
        except ValueError:
            self.fail(f"{value!r} is not 'auto', a number of bytes or a size like 4GB", param, ctx)
        return text


class Resources(click.ParamType):
    """Abstract resources like ``"GPU=2 MEM=10e9"`` (spaces or commas between them)."""

    name = "resources"

    def convert(self, value: Any, param: Any, ctx: Any) -> dict[str, float]:
        if isinstance(value, dict):
            return value
        resources = {}
        for item in value.replace(",", " ").split():
            name, sep, amount = item.partition("=")
            try:
                if not (name and sep):
                    raise ValueError
                resources[name] = float(amount)
            except ValueError:
                self.fail(f"{item!r} is not NAME=AMOUNT, as in 'GPU=2 MEM=10e9'", param, ctx)
        return resources


class Ports(click.ParamType):
    """A port, or a range ``first:last`` of ports to hand out to several workers."""

    name = "port[:last]"

    def convert(self, value: Any, param: Any, ctx: Any) -> list[int]:
        if isinstance(value, list):
            return value
        first, _, last = str(value).partition(":")
        try:
            ports = list(range(int(first), int(last or first) + 1))
        except ValueError:
            ports = []
        if not ports or ports[0] < 0 or ports[-1] > 65535:
            self.fail(f"{value!r} is not a port or a range of ports like 9000:9010", param, ctx)
        return ports


def protocol_option(ctx: Any, param: Any, value: str | None) -> str | None:
    """Validate ``--protocol``: TCP or TLS."""
    if value is None:
        return None
    protocol = value.lower().rstrip(":/")
    if protocol not in ("tcp", "tls"):
        raise click.BadParameter(f"{value!r} is not supported; only 'tcp' and 'tls' are")
    return protocol


def split_host(host: str | None, protocol: str | None) -> tuple[str | None, str | None]:
    """Accept ``tcp://HOST`` for ``--host`` (as dask does) and bracket bare IPv6 hosts."""
    if host is None:
        return None, protocol
    if "://" in host:
        scheme, host = host.split("://", 1)
        protocol = protocol_option(None, None, protocol or scheme)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host, protocol


def pid_file_option(command: Callable) -> Callable:
    """``--pid-file PATH``, as dask-scheduler and dask-worker have it."""
    return click.option(
        "--pid-file",
        type=click.Path(dir_okay=False),
        help="Write this process's id to this file (removed on exit).",
    )(command)


def not_yet_options(*names: str, flags: tuple[str, ...] = ()) -> Callable:
    """Options of dask's commands that distributary does not support yet: accepted by
    name, so that a script using one is told so plainly (a usage error) if it is given."""

    def refuse(ctx: Any, param: Any, value: Any) -> None:
        if value not in (None, False, ()):
            raise click.UsageError(f"{param.opts[0]} is not supported yet")

    def decorate(command: Callable) -> Callable:
        for name in reversed(names):
            option = click.option(
                name, expose_value=False, callback=refuse, help="Not supported yet.", hidden=True
            )
            command = option(command)
        for name in reversed(flags):
            option = click.option(
                name, is_flag=True, expose_value=False, callback=refuse, hidden=True
            )
            command = option(command)
        return command

    return decorate


@contextlib.contextmanager
def writing_pid_file(path: str | None) -> Iterator[None]:
    """Write this process's id to ``path`` (if given) while the block runs."""
    if not path:
        yield
        return
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


# ---------------------------------------------------------------------- running


def setup_logging() -> None:
    """Send distributary's log, from INFO up, to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger("distributary")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signal_name = signal.Signals(signum).name


class SignalCatcher:
    """Turns SIGINT and SIGTERM into :class:`Interrupted` in what :meth:`race` awaits."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._received: list[int] = []
        self._wakeup: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> SignalCatcher:
        self._loop = asyncio.get_running_loop()
        for signum in self.SIGNALS:
            self._loop.add_signal_handler(signum, self._on_signal, signum)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum in self.SIGNALS:
            self._loop.remove_signal_handler(signum)

    def discard(self) -> None:
        """Forget the signals received so far."""
        self._received.clear()

    def _on_signal(self, signum: int) -> None:
        self._received.append(signum)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def race(self, awaitable: Awaitable[T], timeout: float | None = None) -> T:
        """Await ``awaitable``; if a signal (or ``timeout``) comes first, cancel it and
        raise Interrupted (or TimeoutError)."""
        task = asyncio.ensure_future(awaitable)
        self._wakeup = self._loop.create_future()
        if self._received:
            self._wakeup.set_result(None)
        try:
            await asyncio.wait(
                (task, self._wakeup), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._wakeup.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # let it unwind
        if self._received:
            raise Interrupted(self._received.pop(0))
        raise TimeoutError(f"Not done within {timeout} s")


async def serve(
    what: str,
    make_nodes: Callable[[], Awaitable[Sequence[ServerNode]]],
    on_started: Callable[[Sequence[ServerNode]], None],
) -> int:
    """Make and start the nodes, wait until they close or a signal comes, close them.

    Returns the exit code; raises ClickException (exit code 1) if they cannot start.
    """
    nodes: Sequence[ServerNode] = ()
    error: BaseException | None = None
    with SignalCatcher() as signals:
        try:
            nodes = await signals.race(make_nodes())
            await signals.race(_start_all(nodes))
            on_started(nodes)
            await signals.race(asyncio.gather(*(node.finished() for node in nodes)))
            logger.info("The %s closed", what)
        except Interrupted as exc:
            logger.info("Received %s: closing the %s", exc.signal_name, what)
        except Exception as exc:
            error = exc
        closed = await _close_all(nodes, signals)
    if error is not None:
        text = " ".join(str(error).split()) or type(error).__name__
        raise click.ClickException(f"Could not start the {what}: {text}")
    return 0 if closed else 1


async def _start_all(nodes: Sequence[ServerNode]) -> None:
    results = await asyncio.gather(*(node.start() for node in nodes), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _close_all(nodes: Sequence[ServerNode], signals: SignalCatcher) -> bool:
    """Close the nodes; False if they had to be killed (second signal or too slow)."""
    # A nanny forgets its process as it starts closing: note them now, to kill if need be.
    processes = [p for p in (getattr(node, "process", None) for node in nodes) if p is not None]
    signals.discard()  # one that came as the nodes closed by themselves asks for this close
    try:
        results = await signals.race(
            asyncio.gather(*(node.close() for node in nodes), return_exceptions=True),
            timeout=CLOSE_TIMEOUT,
        )
    except Interrupted as exc:
        logger.warning("Received %s again: killing the worker processes", exc.signal_name)
    except TimeoutError:
        logger.warning("Not closed after %g s: killing the worker processes", CLOSE_TIMEOUT)
    else:
        for result in results:
            if isinstance(result, Exception):
                logger.warning("Error while closing: %r", result)
        return True
    for process in processes:
        process.kill_now()
    return False
