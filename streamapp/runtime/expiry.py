"""Expiry of finished invocations: their outcomes are kept for the results retention, then dropped.

Part of the partition state machine (``partition.py`` applies ``expire``
commands with ``expire`` below), like every other command: it writes only
the partition of the command being applied. The ``expiry`` index
(``runtime/expiry_index.py``) holds outcomes by finish time, so a command
walks from the oldest and stops at the first one not yet due, with bounded
work.
"""

from __future__ import annotations

import logging
import time

from streamapp.runtime.partition_state import PartitionState
from streamapp.runtime.store import expiry_bound, expiry_key

log = logging.getLogger(__name__)

# Expiry: the owner sends an ``expire`` command to each partition every
# EXPIRE_EVERY seconds; each drops at most EXPIRE_MAX outcomes (oldest first,
# from the expiry index; or visits as many results rows not indexed yet,
# written before the index existed), so no command holds the loop long, and
# the worker drops at most EXPIRE_RATE a second over all its partitions, so
# catching up on a backlog leaves the loop to the invocations. Capacity:
# EXPIRE_MAX / EXPIRE_EVERY = EXPIRE_RATE = 8,000 outcomes/s, even if every
# finish lands on one partition (the throughput target is 1,200/s).
EXPIRE_EVERY = 0.1
EXPIRE_MAX = 800
EXPIRE_RATE = 8_000
SWEEP_MAX = 500
EXPIRE_LOG_EVERY = 60.0


def due(st: PartitionState, before: float) -> bool:
    """Whether an expire command for ``st.p`` would drop or sweep anything (a read, no write).

    Lets the owner send expire commands only where there is work: an idle
    partition costs no record on the internal topic.
    """
    store, p = st.shared.store, st.p
    if store.index_swept(p) is not True:
        return True
    hint = st.expired_to
    start = hint[1] if hint is not None and hint[0] == st.epoch else None
    for key in store.partition_keys(store.expiry, p, start):
        return key < expiry_bound(before)
    return False


def expire(st: PartitionState, before: float) -> None:
    """Drop outcomes older than the retention: their ids are no longer deduplicated.

    Walks the expiry index from its oldest key and stops at the first one
    not older than ``before`` or after EXPIRE_MAX rows; the next command
    goes on from there. Each results row is deleted with its index row.
    """
    store, p = st.shared.store, st.p
    bound = expiry_bound(before)
    epoch = st.epoch
    # Where the last command stopped (only an iteration hint, to seek past
    # the deleted keys RocksDB has not compacted away yet): within one
    # epoch only this worker writes the partition, and it indexes new
    # outcomes at its clock's now, after every key already expired.
    hint = st.expired_to
    start = hint[1] if hint is not None and hint[0] == epoch else None
    tokens, at = st.shared.expire_bucket
    now = time.monotonic()
    allowed = int(min(float(EXPIRE_MAX), tokens + (now - at) * EXPIRE_RATE))
    dropped: list[str] = []
    if allowed > 0:
        for key in store.partition_keys(store.expiry, p, start):
            if key >= bound:
                break
            dropped.append(key)
            if len(dropped) == allowed:
                break
    for key in dropped:
        inv_id = key.split("/", 1)[1]
        if inv_id in store.results:
            del store.results[inv_id]
        del store.expiry[key]
    if dropped:
        st.expired_to = (epoch, dropped[-1])
    visited, swept = _sweep_unindexed(st, before, min(SWEEP_MAX, allowed - len(dropped)))
    st.shared.expire_bucket = (allowed - len(dropped) - visited, now)
    # Commands come 10 times a second: say what they dropped once a minute.
    logged, since = st.expired_log or (-EXPIRE_LOG_EVERY, 0)
    since += len(dropped) + swept
    if since and time.monotonic() - logged >= EXPIRE_LOG_EVERY:
        log.info("Expired finished invocations partition=%s count=%d", p, since)
        logged, since = time.monotonic(), 0
    st.expired_log = (logged, since)


def _sweep_unindexed(st: PartitionState, before: float, limit: int) -> tuple[int, int]:
    """Index (or drop, if already past the retention) results rows the index did not see written.

    Once per partition of a new index (``runtime/expiry_index.py``), ``limit``
    rows per command, from a cursor kept in the index (so a restart goes on
    from there). Returns how many rows it visited and how many it dropped.
    """
    store, p = st.shared.store, st.p
    mark = store.index_swept(p)
    if limit <= 0 or mark is True:
        return 0, 0
    cursor = mark if isinstance(mark, str) else None
    visited = dropped = 0
    for inv_id, rec in store.partition_items(store.results, p, cursor):
        if inv_id == cursor:
            continue  # done by the last command
        visited += 1
        cursor = inv_id
        finished = rec.get("finished", 0.0)
        key = expiry_key(finished, inv_id)
        if finished < before:
            del store.results[inv_id]
            if key in store.expiry:
                del store.expiry[key]
            dropped += 1
        elif key not in store.expiry:
            store.expiry[key] = inv_id
        if visited == limit:
            store.set_index_swept(p, cursor)
            return visited, dropped
    store.set_index_swept(p, True)
    log.info("Expiry index covers every outcome partition=%s", p)
    return visited, dropped
