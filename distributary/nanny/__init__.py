"""Internal: the Nanny runs a worker in its own (spawned) process, restarts it when it
dies; the public names are those of the ``distributary`` package.

``server`` is the Nanny, ``process`` its handle of the worker process, ``child`` what
runs in that process.
"""
