"""The Nanny: runs a worker in its own (spawned) process, restarts it when it dies.

``server`` is the Nanny, ``process`` its handle of the worker process, ``child`` what
runs in that process.
"""

from distributary.nanny.server import Nanny

__all__ = ["Nanny"]
