"""distributary: a fast distributed task scheduler with the dask.distributed API."""

from distributary import config  # noqa: F401  (registers the configuration defaults)

__version__ = "0.1.0"
