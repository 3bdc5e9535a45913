"""``distributary worker``: run workers (in nanny-watched processes) for a scheduler."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import click
import dask.config
from dask.utils import format_bytes

from distributary.cli.common import (
    CONTEXT_SETTINGS,
    DEFAULT_SCHEDULER_PORT,
    Duration,
    MemoryLimit,
    Ports,
    Resources,
    not_yet_options,
    pid_file_option,
    protocol_option,
    serve,
    setup_logging,
    split_host,
    writing_pid_file,
)
from distributary.cli.tls import security_from_options, tls_options
from distributary.comm import connect
from distributary.comm.addressing import normalize_address, parse_address
from distributary.deploy.local import _workers_and_threads
from distributary.nanny.server import Nanny
from distributary.node import ServerNode
from distributary.utils.process import cpu_count, exit_process
from distributary.worker.server import Worker

logger = logging.getLogger("distributary.cli")


class WorkerCount(click.ParamType):
    """A number of workers: ``auto``, or an int (negative counts back from the cores)."""

    name = "integer|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if isinstance(value, int) or value == "auto":
            return value
        try:
            n = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor 'auto'", param, ctx)
        if n < 0:
            n = cpu_count() + 1 + n
        if n <= 0:
            self.fail(f"{value} leaves no worker to start on {cpu_count()} cores", param, ctx)
        return n


def _scheduler_address(ctx: Any, param: Any, value: str | None) -> str | None:
    """Normalize the address argument; the port defaults to the scheduler's 8786."""
    if value is None:
        return None
    try:
        scheme, location = parse_address(value)
        if scheme in ("tcp", "tls") and (location.endswith("]") or ":" not in location):
            value = f"{scheme}://{location}:{DEFAULT_SCHEDULER_PORT}"
        return normalize_address(value)
    except (ValueError, NotImplementedError) as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(context_settings=CONTEXT_SETTINGS)
@pid_file_option
@click.option("--nprocs", type=WorkerCount(), hidden=True, help="Deprecated: use --nworkers.")
@not_yet_options(
    "--listen-address",
    "--contact-address",
    "--preload",
    "--preload-nanny",
    "--preload-argv",
    "--dashboard-prefix",
    "--scheduler-sni",
)
@click.argument("scheduler_address", required=False, callback=_scheduler_address)
@click.option(
    "--scheduler-file",
    type=click.Path(dir_okay=False),
    help="Read the scheduler's address from this JSON file, as written by `distributary "
    "scheduler --scheduler-file`; waits for it to appear (up to --death-timeout).",
)
@click.option(
    "--nworkers",
    type=WorkerCount(),
    default=1,
    show_default=True,
    help="Number of workers to start. A negative number n means (cores + 1 + n); "
    "'auto' picks workers and threads from the number of cores.",
)
@click.option(
    "--nthreads",
    type=click.IntRange(min=1),
    help="Threads per worker. [default: the cores shared out among the workers]",
)
@click.option(
    "--memory-limit",
    type=MemoryLimit(),
    default="auto",
    show_default=True,
    help="Memory per worker: bytes (4e9) or a size (4GB, 500MiB); a fraction of the "
    "machine's memory (0.5); 'auto', a share of it in proportion to the threads; "
    "0 for no limit.",
)
@click.option(
    "--nanny/--no-nanny",
    default=True,
    help="Run each worker in a process of its own, watched (and restarted) by a nanny, "
    "or else all workers inside this process.  [default: --nanny]",
)
@click.option(
    "--name",
    help="A name for the worker, unique in the cluster, like 'gpu-1'. With several "
    "workers each gets a suffix: NAME-0, NAME-1, ...",
)
@click.option(
    "--host",
    help="Host name or IP address to listen on, which the scheduler, clients and other "
    "workers must be able to reach. [default: the address facing the scheduler]",
)
@click.option("--interface", help="Network interface to listen on, like 'eth0' or 'ib0'.")
@click.option("--protocol", callback=protocol_option, help="Transport protocol: tcp or tls.")
@click.option(
    "--worker-port",
    type=Ports(),
    help="Port for the worker to listen on, or a range like 9000:9010 to share out "
    "among several workers. [default: a free port]",
)
@click.option(
    "--nanny-port",
    type=Ports(),
    help="Port (or range of ports) for the nannies to listen on. [default: a free port]",
)
@click.option(
    "--resources",
    type=Resources(),
    help='Abstract resources each worker offers to tasks that ask for them, like "GPU=2 MEM=10e9".',
)
@click.option(
    "--local-directory",
    type=click.Path(file_okay=False),
    help="Directory for the workers' scratch space. [default: the temporary directory]",
)
@click.option(
    "--death-timeout",
    type=Duration(),
    help="How long to keep trying to reach the scheduler before giving up, like '60s'.",
)
@click.option(
    "--lifetime",
    type=Duration(),
    help="Close each worker gracefully after it has run this long, like '1 hour'.",
)
@click.option(
    "--lifetime-stagger",
    type=Duration(),
    help="Vary each worker's --lifetime randomly by up to this much, so that they do "
    "not all close at once.",
)
@click.option(
    "--lifetime-restart/--no-lifetime-restart",
    default=None,
    help="Start a fresh worker when --lifetime is up (needs --nanny).",
)
@click.option(
    "--dashboard-address",
    help="Address of each worker's HTTP server (/metrics and /health), like ':8790'; "
    "a random port by default.",
)
@click.option(
    "--dashboard/--no-dashboard",
    default=True,
    help="Accepted for dask.distributed's command line: each worker always serves /metrics "
    "and /health.  [default: --dashboard]",
)
@tls_options
def worker(
    pid_file: str | None,
    nprocs: int | str | None,
    scheduler_address: str | None,
    scheduler_file: str | None,
    nworkers: int | str,
    nthreads: int | None,
    memory_limit: str | int | float,
    nanny: bool,
    name: str | None,
    host: str | None,
    interface: str | None,
    protocol: str | None,
    worker_port: list[int] | None,
    nanny_port: list[int] | None,
    resources: dict[str, float] | None,
    local_directory: str | None,
    death_timeout: float | None,
    lifetime: float | None,
    lifetime_stagger: float | None,
    lifetime_restart: bool | None,
    dashboard_address: str | None,
    dashboard: bool,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Start workers for a scheduler.

    SCHEDULER_ADDRESS is where the scheduler listens, like tcp://10.0.0.1:8786
    (or give --scheduler-file). The workers run until the scheduler goes away, or
    until Ctrl-C (SIGINT) or SIGTERM, which closes them and their processes.
    """
    if scheduler_address and scheduler_file:
        raise click.UsageError("Give either SCHEDULER_ADDRESS or --scheduler-file, not both")
    if not scheduler_address and not scheduler_file:
        configured = dask.config.get("scheduler-address", default=None)
        if configured is None:
            raise click.UsageError(
                "Give the scheduler's address (distributary worker tcp://HOST:8786) "
                "or --scheduler-file"
            )
        scheduler_address = _scheduler_address(None, None, configured)
    if nprocs is not None:
        logger.warning("--nprocs is deprecated: use --nworkers")
        nworkers = nprocs
    if nanny_port and not nanny:
        raise click.UsageError("--nanny-port needs --nanny")
    if nworkers == "auto":
        nworkers, nthreads = _workers_and_threads(None, nthreads, processes=True)
    nthreads = nthreads or max(1, cpu_count() // nworkers)
    worker_ports = _share_ports(worker_port, nworkers, "--worker-port")
    nanny_ports = _share_ports(nanny_port, nworkers, "--nanny-port")
    host, protocol = split_host(host, protocol)
    names = _names(name, nworkers)
    options = {
        "nthreads": nthreads,
        "memory_limit": memory_limit,
        "resources": resources,
        "protocol": protocol,
        "interface": interface,
        "local_directory": local_directory,
        "death_timeout": death_timeout,
        "security": security_from_options("worker", tls_ca_file, tls_cert, tls_key),
    }
    # Passed only when given, so that workers without these parameters still start.
    optional = {
        "lifetime": lifetime,
        "lifetime_stagger": lifetime_stagger,
        "lifetime_restart": lifetime_restart,
        "dashboard_address": dashboard_address if dashboard else None,
    }
    options.update({key: value for key, value in optional.items() if value is not None})
    setup_logging()

    async def make_nodes() -> list[ServerNode]:
        address = scheduler_address or await _read_scheduler_file(scheduler_file, death_timeout)
        logger.info(
            "Starting %d %s for the scheduler at %s",
            nworkers,
            ("nanny-watched worker" if nanny else "in-process worker")
            + ("s" if nworkers > 1 else ""),
            address,
        )
        # Fail fast, with the connection's own error, before starting any process.
        security = options["security"].get_connection_args("worker")
        comm = await connect(address, timeout=death_timeout, **security)
        await comm.close()
        if nanny:
            return [
                Nanny(address, name=n, host=host, port=np, worker_port=wp, **options)
                for n, wp, np in zip(names, worker_ports, nanny_ports)
            ]
        return [
            Worker(address, name=n, host=host, port=wp, **options)
            for n, wp in zip(names, worker_ports)
        ]

    with writing_pid_file(pid_file):
        code = asyncio.run(serve("workers", make_nodes, _log_workers))
    exit_process(code)


def _share_ports(ports: list[int] | None, n: int, option: str) -> list[int | None]:
    """One port per worker from ``ports`` (None: any free port)."""
    if not ports or ports == [0]:
        return [None] * n
    if len(ports) < n:
        raise click.BadParameter(
            f"{len(ports)} port(s) for {n} workers; give a range like "
            f"{ports[0]}:{ports[0] + n - 1}",
            param_hint=option,
        )
    return ports[:n]


def _names(name: str | None, n: int) -> list[Any]:
    """Names as dask gives them: the name itself (an int if it reads as one), or with
    several workers ``NAME-0``, ``NAME-1``, ..."""
    if not name:
        return [None] * n
    if n > 1:
        return [f"{name}-{i}" for i in range(n)]
    try:
        return [int(name)]
    except ValueError:
        return [name]


async def _read_scheduler_file(path: str, timeout: float | None) -> str:
    """The address in a scheduler file, waiting up to ``timeout`` for it to be written."""
    deadline = None if timeout is None else time.monotonic() + timeout
    waiting = False
    while True:
        try:
            with open(path) as f:
                return normalize_address(json.load(f)["address"])
        except (OSError, ValueError, KeyError, TypeError) as exc:  # not (fully) written yet
            problem = exc
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"No scheduler address in {path} after {timeout:g} s: {problem}")
        if not waiting:
            logger.info("Waiting for the scheduler file %s", path)
            waiting = True
        await asyncio.sleep(0.1)


def _log_workers(nodes: Sequence[ServerNode]) -> None:
    for node in nodes:
        memory = format_bytes(node.memory_limit) if node.memory_limit else "no limit"
        nanny = f", nanny at: {node.address}" if isinstance(node, Nanny) else ""
        logger.info(
            "Worker at: %s, name: %s, threads: %d, memory: %s%s",
            node.worker_address,
            node.name,
            node.nthreads,
            memory,
            nanny,
        )
