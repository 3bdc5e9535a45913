"""``python -m distributary.cli``: the same as the ``distributary`` command."""

from distributary.cli import main

main(prog_name="distributary")
