"""Fires durable timers of the partitions this worker drives.

Timers are durable in the ``timers`` table (its changelog is the scheduled
timers topic); this is only the in-memory index of one worker: a heap of
(wake_at, id, partition, epoch), rebuilt when a partition is activated.
A sleeping invocation costs one heap entry here and no task. When a timer is
due the scheduler sends a ``fire`` command naming the timer's wake-up time
(so a late copy of it cannot wake a later sleep); the invocations agent
applies it and resumes the invocation. A fire that could not be sent is tried
again a second later, still naming the same wake-up time.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Fire = Callable[[int, str, str, float], Awaitable[None]]  # partition, epoch, id, wake_at
Entry = tuple[float, str, int, str, float]  # due, id, partition, epoch, wake_at


class Scheduler:
    def __init__(self, fire: Fire, lateness: Callable[[float], None] = lambda seconds: None) -> None:
        """``lateness(seconds)``: told how late each due timer was taken up (a metric)."""
        self._fire = fire
        self._lateness = lateness
        self._heap: list[Entry] = []
        self._counts: Counter[int] = Counter()
        self._wakeup = asyncio.Event()

    def add(self, p: int, epoch: str | None, inv_id: str, wake_at: float) -> None:
        assert epoch is not None
        self._push((wake_at, inv_id, p, epoch, wake_at))

    def _push(self, entry: Entry) -> None:
        heapq.heappush(self._heap, entry)
        self._counts[entry[2]] += 1
        if self._heap[0] is entry:
            self._wakeup.set()

    def count(self, p: int) -> int:
        return self._counts[p]

    def total(self) -> int:
        return len(self._heap)

    def drop_partitions(self, partitions: set[int]) -> None:
        self._heap = [entry for entry in self._heap if entry[2] not in partitions]
        heapq.heapify(self._heap)
        for p in partitions:
            self._counts.pop(p, None)
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            now = time.time()
            due: list[Entry] = []
            while self._heap and self._heap[0][0] <= now:
                due.append(heapq.heappop(self._heap))
            for entry in due:
                self._counts[entry[2]] -= 1
                self._lateness(now - entry[0])
            if due:
                results = await asyncio.gather(
                    *(self._fire(p, epoch, inv_id, wake_at) for _, inv_id, p, epoch, wake_at in due),
                    return_exceptions=True,
                )
                for entry, result in zip(due, results, strict=True):
                    if isinstance(result, BaseException):
                        log.warning("Timer fire failed, retrying invocationID=%s error=%r", entry[1], result)
                        _, inv_id, p, epoch, wake_at = entry
                        self._push((time.time() + 1.0, inv_id, p, epoch, wake_at))
                continue
            timeout = self._heap[0][0] - now if self._heap else 3600.0
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=min(timeout, 3600.0))
            except TimeoutError:
                pass
