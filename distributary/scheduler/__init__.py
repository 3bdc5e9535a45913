"""Internal: the scheduler (its pure state machine, ``state``, and its server);
the public names are those of the ``distributary`` package."""
