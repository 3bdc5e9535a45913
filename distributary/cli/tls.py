"""The commands' TLS options: ``--tls-ca-file``, ``--tls-cert`` and ``--tls-key``, as
dask.distributed's commands have them, and the Security they make."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from distributary.security import Security

__all__ = ["security_from_options", "tls_options"]

F = TypeVar("F", bound=Callable[..., Any])

_PEM = click.Path(exists=True, dir_okay=False)


def tls_options(command: F) -> F:
    """Add the TLS options to a command (its function takes ``tls_ca_file``,
    ``tls_cert`` and ``tls_key``)."""
    options = [
        click.option(
            "--tls-ca-file",
            type=_PEM,
            help="CA certificate (PEM) that must sign every peer's certificate; with the "
            "TLS options the node takes TLS connections only (tls://).",
        ),
        click.option("--tls-cert", type=_PEM, help="This node's certificate (PEM)."),
        click.option(
            "--tls-key",
            type=_PEM,
            help="This node's private key (PEM), unless it is in the --tls-cert file.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def security_from_options(
    role: str, tls_ca_file: str | None, tls_cert: str | None, tls_key: str | None
) -> Security:
    """The Security of a node of ``role`` started with these options (which then
    requires encryption), or the configuration's when none is given."""
    if tls_ca_file is None and tls_cert is None and tls_key is None:
        return Security()
    return Security(
        require_encryption=True,
        tls_ca_file=tls_ca_file,
        **{f"tls_{role}_cert": tls_cert, f"tls_{role}_key": tls_key},
    )
