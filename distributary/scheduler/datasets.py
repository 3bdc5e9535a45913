"""Published datasets: named values that the scheduler keeps for any client to fetch.

Theory of operation
-------------------
A client publishes a value under a name (``Client.publish_dataset``).  The value
reaches the scheduler already pickled, as an opaque :class:`Serialized`, together
with the keys of the futures it refers to (futures are pickled as their keys only).
The scheduler never unpickles it: it stores the frames and hands them back to
whoever asks (``Client.get_dataset``).

Keeping the data alive: each dataset has a pseudo-client, ``published-<name>``,
that wants the dataset's keys in the state machine exactly as a real client would
(``ClientDesiresKeys`` when published, ``RemoveClient`` when unpublished), so the
ordinary reference counting keeps the results while the dataset exists and frees
them afterwards unless somebody else still wants them.

Ordering: a publish (or unpublish) request may overtake the client's stream, which
carries the tasks of the futures it publishes, so it waits for the client's flush
marker (:mod:`distributary.scheduler.flushes`) before acting.  After the flush the
scheduler still checks that every key exists and refuses the publication with a
ValueError naming the first missing key (a cancelled or released future), publishing
nothing.

Fetching: ``publish-get`` also makes the asking client want the dataset's keys, at the
same moment it reads the dataset, so that an unpublish racing with the fetch cannot
free them before the client's own ``client-desires-keys`` (sent on its stream once it
has made the futures) arrives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from distributary.protocol import requests as rq
from distributary.protocol.serialize import Serialized
from distributary.scheduler import events as ev
from distributary.scheduler import instructions as ins
from distributary.scheduler.extension import SchedulerContext, SchedulerExtension

logger = logging.getLogger("distributary.scheduler")


@dataclass(slots=True)
class Dataset:
    """One published dataset: its pickled value and the keys of the futures in it."""

    name: Any
    data: Serialized
    keys: tuple
    client: str  # the pseudo-client that wants ``keys``


class DatasetExtension(SchedulerExtension):
    """The scheduler's store of published datasets."""

    def __init__(self, scheduler: SchedulerContext):
        super().__init__(scheduler)
        self.datasets: dict[Any, Dataset] = {}
        self.handlers.update(
            {
                rq.PublishPut: self.put,
                rq.PublishGet: self.get,
                rq.PublishList: self.list,
                rq.PublishDelete: self.delete,
            }
        )
        self.instruction_handlers[ins.ClusterRestarted] = self.clear

    # ------------------------------------------------------------------ handlers

    async def put(self, comm: Any, msg: rq.PublishPut) -> None:
        """Publish ``data[i]`` (holding the futures ``keys[i]``) under ``names[i]``.

        All or nothing: an existing name (without ``override``) raises KeyError and a
        key the scheduler does not know raises ValueError, and then nothing is published.
        """
        names, data, keys = msg.names, msg.data, msg.keys
        if not len(names) == len(data) == len(keys):
            raise ValueError("publish-put needs as many data and keys as names")
        for value in data:
            if not isinstance(value, Serialized):
                raise TypeError(f"data: expected a serialized value, got {type(value).__name__}")
        await self.scheduler.after_flush(msg.client, msg.uid)

        if len(set(names)) != len(names):
            raise ValueError(f"Dataset names given more than once: {list(names)!r}")
        if not msg.override:
            for name in names:
                if name in self.datasets:
                    raise KeyError(f"Dataset {name} already exists")
        tasks = self.scheduler.state.tasks
        for name, dataset_keys in zip(names, keys):
            for key in dataset_keys:
                if key not in tasks:
                    raise ValueError(
                        f"Cannot publish dataset {name!r}: the scheduler does not know key "
                        f"{key!r} (was its future released or cancelled?)"
                    )

        stimulus_id = f"publish-{msg.uid or id(msg)}"
        for name, value, dataset_keys in zip(names, data, keys):
            old = self.datasets.pop(name, None)
            pseudo = self._pseudo_client(name)
            self.datasets[name] = Dataset(name, value, dataset_keys, pseudo)
            # Want the new keys before letting go of the old ones: a key in both stays.
            if dataset_keys:
                self.scheduler.handle(
                    ev.ClientDesiresKeys(stimulus_id, dataset_keys, client=pseudo)
                )
            if old is not None:
                self._release(old, stimulus_id, keep=set(dataset_keys))

    def get(self, comm: Any, msg: rq.PublishGet) -> list:
        """The datasets ``names`` (None for a missing one).

        The asking ``client`` (if connected) wants their keys from now on.
        """
        client = msg.client
        connected = client is not None and self.scheduler.is_connected(client)
        out: list = []
        wanted: dict = {}
        for name in msg.names:
            dataset = self.datasets.get(name)
            if dataset is None:
                out.append(None)
                continue
            out.append(rq.Dataset(dataset.data, dataset.keys))
            wanted.update(dict.fromkeys(dataset.keys))
        if connected and wanted:
            self.scheduler.handle(
                ev.ClientDesiresKeys(f"publish-get-{client}", tuple(wanted), client=client)
            )
        return out

    def list(self, comm: Any, msg: rq.PublishList) -> list:
        """The names of the published datasets, sorted by their text."""
        return sorted(self.datasets, key=str)

    async def delete(self, comm: Any, msg: rq.PublishDelete) -> None:
        """Unpublish ``names``; a name that is not published is ignored."""
        await self.scheduler.after_flush(msg.client, msg.uid)
        stimulus_id = f"unpublish-{msg.uid or id(msg)}"
        for name in msg.names:
            dataset = self.datasets.pop(name, None)
            if dataset is not None:
                self._release(dataset, stimulus_id)

    def clear(self, restarted: ins.ClusterRestarted) -> None:
        """Unpublish everything: the cluster restarted, the data is gone."""
        datasets, self.datasets = self.datasets, {}
        for dataset in datasets.values():
            self._release(dataset, "restart")

    # ------------------------------------------------------------------ pseudo-clients

    def _pseudo_client(self, name: Any) -> str:
        """``published-<name>``; made unique if another name prints the same (1, "1")."""
        base = f"published-{name}"
        taken = {d.client for d in self.datasets.values()}
        candidate = base
        n = 1
        while candidate in taken:
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    def _release(self, dataset: Dataset, stimulus_id: str, keep: set | None = None) -> None:
        if keep is None or dataset.client not in {d.client for d in self.datasets.values()}:
            # Nobody else goes by this pseudo-client: drop it with all its wants.
            self.scheduler.handle(ev.RemoveClient(stimulus_id, dataset.client))
            return
        unwanted = tuple(k for k in dataset.keys if k not in keep)
        if unwanted:
            self.scheduler.handle(
                ev.ClientReleasesKeys(stimulus_id, unwanted, client=dataset.client)
            )
