"""Load distributary's configuration defaults into ``dask.config``."""

from __future__ import annotations

import os

import dask.config
import yaml

_DEFAULTS_FILE = os.path.join(os.path.dirname(__file__), "distributary.yaml")

with open(_DEFAULTS_FILE) as f:
    _defaults = yaml.safe_load(f)

dask.config.update_defaults(_defaults)


def transition_log_length() -> int:
    """How many transitions a scheduler or worker keeps for ``story()``:
    ``distributed.admin.low-level-log-length``, as in dask.distributed, or the older
    ``distributed.scheduler.transition-log-length`` if set (dask.distributed, once
    imported, renames that key to the new one itself)."""
    value = dask.config.get("distributed.scheduler.transition-log-length", default=None)
    if value is None:
        value = dask.config.get("distributed.admin.low-level-log-length")
    return int(value)
