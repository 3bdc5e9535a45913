"""``distributary spec``: run servers described by a JSON spec until SIGINT or SIGTERM
(what SSHCluster starts on each host, like dask's ``dask spec``)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import click

from distributary.cli.common import CONTEXT_SETTINGS, serve, setup_logging
from distributary.deploy.specs import check_spec, resolve
from distributary.nanny.server import Nanny
from distributary.node import ServerNode
from distributary.utils.process import exit_process
from distributary.worker.server import Worker

logger = logging.getLogger("distributary.cli")


def _spec(ctx: Any, param: Any, value: str | None) -> dict | None:
    if value is None:
        return None
    try:
        spec = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise click.BadParameter("must be a JSON object")
    if "cls" in spec:  # one server
        spec = {spec.get("options", {}).get("name", 0): spec}
    try:
        return {name: check_spec(each, f"server {name!r}") for name, each in spec.items()}
    except (TypeError, ImportError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("scheduler_address", required=False)
@click.option(
    "--spec",
    "spec",
    callback=_spec,
    help='The servers, as JSON: {"cls": "distributary.Scheduler", "options": {...}} for '
    'one, or {NAME: {"cls": "distributary.Nanny", "options": {...}}, ...} for several.',
)
@click.option(
    "--spec-file",
    type=click.File(),
    help="Read the JSON spec from this file instead.",
)
def spec(scheduler_address: str | None, spec: dict | None, spec_file: Any) -> None:
    """Start the servers of a spec; stop them with Ctrl-C (SIGINT) or SIGTERM.

    Workers and nannies are given SCHEDULER_ADDRESS first, as in
    distributary spec tcp://10.0.0.1:8786 --spec '{"cls": "distributary.Nanny"}'.
    """
    if (spec is None) == (spec_file is None):
        raise click.UsageError("Give exactly one of --spec and --spec-file")
    if spec_file is not None:
        spec = _spec(None, None, spec_file.read())
    args = () if scheduler_address is None else (scheduler_address,)
    setup_logging()

    async def make_nodes() -> list[ServerNode]:
        nodes = []
        for name, each in spec.items():
            options = dict(each.get("options", {}))
            if args:
                options.setdefault("name", name)
            nodes.append(resolve(each["cls"])(*args, **options))
        return nodes

    def on_started(nodes: Sequence[ServerNode]) -> None:
        for node in nodes:  # (a scheduler logs "Scheduler at:" itself)
            if isinstance(node, Nanny):
                logger.info("Worker at: %s, name: %s", node.worker_address, node.name)
            elif isinstance(node, Worker):
                logger.info("Worker at: %s, name: %s", node.address, node.name)

    exit_process(asyncio.run(serve("servers", make_nodes, on_started)))
