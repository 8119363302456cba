"""Fires durable timers of the partitions this worker drives.

Timers are durable in the ``timers`` table (its changelog is the scheduled
timers topic); this is only the in-memory index of one worker: a heap of
(wake_at, id, partition, epoch), rebuilt when a partition is activated.
A sleeping invocation costs one heap entry here and no task. When a timer is
due the scheduler sends a ``fire`` command; the invocations agent applies it
and resumes the invocation.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Fire = Callable[[int, str, str], Awaitable[None]]


class Scheduler:
    def __init__(self, fire: Fire) -> None:
        self._fire = fire
        self._heap: list[tuple[float, str, int, str]] = []
        self._counts: Counter[int] = Counter()
        self._wakeup = asyncio.Event()

    def add(self, p: int, epoch: str | None, inv_id: str, wake_at: float) -> None:
        assert epoch is not None
        heapq.heappush(self._heap, (wake_at, inv_id, p, epoch))
        self._counts[p] += 1
        if self._heap[0][1] == inv_id:
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
            due: list[tuple[float, str, int, str]] = []
            while self._heap and self._heap[0][0] <= now:
                due.append(heapq.heappop(self._heap))
            for _, _, p, _ in due:
                self._counts[p] -= 1
            if due:
                results = await asyncio.gather(
                    *(self._fire(p, epoch, inv_id) for _, inv_id, p, epoch in due), return_exceptions=True
                )
                for entry, result in zip(due, results, strict=True):
                    if isinstance(result, BaseException):
                        log.warning("Timer fire failed, retrying invocationID=%s error=%r", entry[1], result)
                        self.add(entry[2], entry[3], entry[1], time.time() + 1.0)
                continue
            timeout = self._heap[0][0] - now if self._heap else 3600.0
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=min(timeout, 3600.0))
            except TimeoutError:
                pass
