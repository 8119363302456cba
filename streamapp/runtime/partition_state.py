"""What the partition state machine keeps: per partition, its memory; per worker, what partitions share.

The rows themselves are in the store (``store.PartitionStore``); this is the
state machine's memory beside them: the fencing epoch, the key-serial actor
map, the applied offset, and a write-through cache of the records in
progress. None of it is about leadership (``engine.py`` keeps that).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from streamapp.runtime.limits import Limits
from streamapp.runtime.store import PartitionStore

IN_FLIGHT = ("running", "sleeping", "retrying", "paused")
RECENT_MAX = 20_000


WAKING = ("sleeping", "retrying", "scheduled")


def summarize(rec: dict[str, Any]) -> tuple[Any, ...]:
    """What a list of unfinished invocations shows of one (``Summary`` fields): kept in memory per partition,
    so a list reads no row (100,000 rows take seconds to decode)."""
    status = rec["status"]
    wake = (rec.get("wake_at") or rec.get("not_before")) if status in WAKING else None
    return (sys.intern(status), sys.intern(rec["service"]), sys.intern(rec["handler"]), rec["key"], rec["attempt"],
            rec["created"], wake, True if rec.get("cancel") is not None else None)


SUMMARY = ("status", "service", "handler", "key", "attempt", "created", "wake_at", "cancel")


def started(rec: dict[str, Any]) -> bool:
    """Whether an invocation was under way: in flight, or dispatched and journaled or retried."""
    return rec["status"] in IN_FLIGHT or bool(rec["journal"]) or rec["attempt"] > 0


class ApplyError(Exception):
    """A valid command could not be applied; its offset must not be committed."""


@dataclass
class Shared:
    """What the partitions of one worker share: the store, the record limits, a read cache, expiry's budget."""

    store: PartitionStore
    limits: Limits = field(default_factory=Limits)  # the broker's record limits, set before the first apply
    recent: dict[str, dict[str, Any]] = field(default_factory=dict)  # write-through cache of records in progress
    expire_bucket: tuple[float, float] = (0.0, float("-inf"))  # (rows the worker may still expire, when counted)


@dataclass
class PartitionState:
    """The state machine's memory of one partition."""

    p: int
    shared: Shared
    epoch: str | None = None  # the epoch commands are fenced by (read from ``meta`` while unknown)
    built: str | None = None  # the activation that built the actor map; None: no map yet
    applied: int = -1  # highest offset applied by this process
    applied_index: int = -1  # and how far into that record (a record can hold several commands)
    inflight: dict[str, str] = field(default_factory=dict)  # object key -> invocation id
    queues: dict[str, deque[str]] = field(default_factory=dict)  # object key -> queued ids
    expired_to: tuple[str | None, str] | None = None  # (epoch, last expiry key dropped): where to seek
    expired_log: tuple[float, int] | None = None  # (last logged, dropped since)
    # invocation id -> ``summarize(row)`` of every unfinished invocation (complete from its activation on)
    summary: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def current_epoch(self) -> str | None:
        if self.epoch is None:
            meta = self.shared.store.meta.get(f"p{self.p}")
            self.epoch = meta["epoch"] if meta else None
        return self.epoch

    def record(self, inv_id: str) -> dict[str, Any] | None:
        """A copy of the invocation's record (from the cache when it is in progress)."""
        rec = self.shared.recent.get(inv_id)
        if rec is None:
            rec = self.shared.store.invocations.get(inv_id)
        return dict(rec) if rec is not None else None

    def save(self, rec: dict[str, Any]) -> None:
        """Write the record (``RowTooLargeError``, nothing written, if its changelog would refuse it)."""
        rec["updated"] = time.time()
        raw = self.shared.limits.check_row("invocations", rec["id"], rec, rec)
        self.shared.store.invocations.put(rec["id"], rec, raw)
        self.summary[rec["id"]] = summarize(rec)
        recent = self.shared.recent
        # Records of invocations in progress stay in memory (the state machine is their only writer).
        if rec["status"] in ("pending", "running"):
            recent[rec["id"]] = rec
            if len(recent) > RECENT_MAX:
                del recent[next(iter(recent))]
        else:
            recent.pop(rec["id"], None)

    def drop_timer(self, inv_id: str) -> None:
        timers = self.shared.store.timers
        if timers.get(inv_id) is not None:
            del timers[inv_id]
