"""``distributary scheduler``: run a scheduler until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import click

from distributary.cli.common import (
    CONTEXT_SETTINGS,
    DEFAULT_SCHEDULER_PORT,
    Duration,
    not_yet_options,
    pid_file_option,
    protocol_option,
    serve,
    setup_logging,
    split_host,
    writing_pid_file,
)
from distributary.cli.tls import security_from_options, tls_options
from distributary.node import ServerNode
from distributary.scheduler.server import Scheduler
from distributary.utils.process import exit_process

logger = logging.getLogger("distributary.cli")


@click.command(context_settings=CONTEXT_SETTINGS)
@pid_file_option
@not_yet_options(
    "--preload",
    "--preload-argv",
    "--dashboard-prefix",
    flags=("--jupyter", "--show", "--use-xheaders"),
)
@click.option(
    "--host",
    help="Host name or IP address to listen on (or tcp://HOST). [default: 127.0.0.1; "
    "use 0.0.0.0 to listen on every interface, so that other machines can connect]",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_SCHEDULER_PORT,
    show_default=True,
    help="Port to listen on; 0 picks a free one.",
)
@click.option("--interface", help="Network interface to listen on, like 'eth0' or 'ib0'.")
@click.option("--protocol", callback=protocol_option, help="Transport protocol: tcp or tls.")
@click.option(
    "--scheduler-file",
    type=click.Path(dir_okay=False),
    help="Write the scheduler's address to this JSON file (removed on exit), so that "
    "workers and clients on a shared file system can find it.",
)
@click.option(
    "--dashboard-address",
    default=":8787",
    show_default=True,
    help="Address of the diagnostic dashboard (also /metrics and /health), like ':8787' "
    "or '0.0.0.0:8787'; ':0' picks a free port.  It listens on --host unless the address "
    "names one; a port in use is a warning and another port.",
)
@click.option(
    "--dashboard/--no-dashboard",
    default=True,
    help="Serve the dashboard (and /metrics, /health) or not.  [default: --dashboard]",
)
@click.option(
    "--idle-timeout",
    type=Duration(),
    help="Shut the scheduler down after this long without work or clients, like '1h'.",
)
@click.option(
    "--worker-ttl",
    type=Duration(),
    help="Remove a worker that has not been heard from for this long, like '5 minutes'.",
)
@tls_options
def scheduler(
    pid_file: str | None,
    host: str | None,
    port: int,
    interface: str | None,
    protocol: str | None,
    scheduler_file: str | None,
    dashboard_address: str,
    dashboard: bool,
    idle_timeout: float | None,
    worker_ttl: float | None,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Start a scheduler; stop it with Ctrl-C (SIGINT) or SIGTERM.

    Workers connect with `distributary worker ADDRESS`, clients with
    Client("ADDRESS"), where ADDRESS is the one logged as "Scheduler at:".
    """
    host, protocol = split_host(host, protocol)
    setup_logging()

    async def make_nodes() -> list[ServerNode]:
        return [
            Scheduler(
                host=host,
                port=port,
                protocol=protocol,
                interface=interface,
                scheduler_file=scheduler_file,
                dashboard_address=dashboard_address if dashboard else None,
                idle_timeout=idle_timeout,
                worker_ttl=worker_ttl,
                security=security_from_options("scheduler", tls_ca_file, tls_cert, tls_key),
            )
        ]

    def on_started(nodes: Sequence[ServerNode]) -> None:
        # (the scheduler logs "Scheduler at: <address>" itself)
        if scheduler_file:
            logger.info("Scheduler file: %s", scheduler_file)

    with writing_pid_file(pid_file):
        code = asyncio.run(serve("scheduler", make_nodes, on_started))
    exit_process(code)
