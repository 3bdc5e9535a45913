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
    """How many transitions the scheduler keeps for ``story()``:
    ``distributed.scheduler.transition-log-length``.  Importing dask.distributed (as
    dask.dataframe may) renames that key to ``distributed.admin.low-level-log-length``,
    which is then read instead."""
    value = dask.config.get("distributed.scheduler.transition-log-length", default=None)
    if value is None:
        value = dask.config.get("distributed.admin.low-level-log-length")
    return int(value)
