"""Internal: clients, futures, and waiting on futures.

The public names are exported by the ``distributary`` package; ``state`` is the pure
core, importable without the rest of the client.
"""
