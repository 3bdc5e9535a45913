"""Internal: the ``distributary`` command, ``distributary scheduler`` and
``distributary worker``.

Run ``distributary scheduler`` on one machine and ``distributary worker ADDRESS`` on
as many as you like; ``python -m distributary.cli`` works where the script is not on
the PATH.
"""

from __future__ import annotations

import click

from distributary import __version__
from distributary.cli.common import CONTEXT_SETTINGS
from distributary.cli.scheduler import scheduler
from distributary.cli.spec import spec
from distributary.cli.worker import worker

__all__ = ["main"]


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="distributary")
def main() -> None:
    """Start the pieces of a distributary cluster from the command line.

    \b
    Start a scheduler, then point workers at it:
        distributary scheduler --scheduler-file cluster.json
        distributary worker --scheduler-file cluster.json --nworkers 2
    Then connect from Python with Client("tcp://HOST:8786") or
    Client(scheduler_file="cluster.json").
    """


main.add_command(scheduler)
main.add_command(worker)
main.add_command(spec)
