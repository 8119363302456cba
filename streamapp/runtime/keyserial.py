"""The key-serial actor map of a partition: one invocation in flight per key, the rest queued in arrival order.

``PartitionState.inflight`` holds the invocation each key runs, and
``PartitionState.queues`` what waits behind it. The state machine
(``partition.py``) calls these while applying a command; starting an
invocation is a ``StartActor`` action, run by the leader (``engine.py``).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from streamapp.runtime.actions import Action, StartActor
from streamapp.runtime.commands import object_key
from streamapp.runtime.partition_state import PartitionState


def enqueue(st: PartitionState, okey: str, inv_id: str, out: list[Action]) -> None:
    """Queue ``inv_id`` behind its key's invocations; start it if the key is free."""
    if st.built is None:
        return  # no map yet: the next activation builds it from the table
    st.queues.setdefault(okey, deque()).append(inv_id)
    if okey not in st.inflight:
        dispatch_next(st, okey, out)


def unqueue(st: PartitionState, rec: dict[str, Any]) -> None:
    queue = st.queues.get(object_key(rec["service"], rec["key"]))
    if queue and rec["id"] in queue:
        queue.remove(rec["id"])


def dispatch_next(st: PartitionState, okey: str, out: list[Action]) -> None:
    """Start the next queued invocation of ``okey``, if any."""
    if st.built is None:
        return
    queue = st.queues.get(okey)
    while queue:
        inv_id = queue.popleft()
        rec = st.record(inv_id)
        if rec is None or rec["status"] != "pending":
            continue
        st.inflight[okey] = inv_id
        out.append(StartActor(st.p, st.epoch, rec))
        break
    if queue is not None and not queue:
        del st.queues[okey]
