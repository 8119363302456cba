"""Flow control: the sources agent waits while too much work is pending on this worker.

Pending work is the invocations queued behind their keys plus the commands
of the partitions this worker leads that are not applied yet. The sources
pause above ``max_pending`` and resume at half of it. While the agent waits,
Faust's own stream-buffer flow control stops fetching the source partitions
(no record is dropped: Faust's explicit ``pause_partitions`` can drop
records already fetched, so it is not used).

One trap: Faust stops *fetching* a partition whose stream buffer is under
pressure, but it still delivers the records it fetched before, and when the
buffer is full its delivery waits, for every partition of the worker's
consumer: the internal topic too. A sources agent held here while its
buffer fills would then stop the invocations agent that alone can bring
pending work down: a deadlock (seen with 8 source partitions, 20,000
records and the default bound). So the agent waits only while its buffer
has room (``full``); the bound can be passed by what was fetched before
the pause, never more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from faust.types import TP

from streamapp.runtime.engine import Engine

log = logging.getLogger(__name__)

FULL_CHECK = 0.05  # seconds between looks at the agent's buffer while the sources wait


class FlowControl:
    def __init__(self, engine: Engine, highwater: Callable[[TP], int | None], topic: Callable[[], str],
                 written: dict[int, int], max_pending: int,
                 extra: dict[int, deque[tuple[int, int]]] | None = None) -> None:
        """``highwater``: the consumer's; ``topic``: the internal topic's name; ``written``, ``extra``: the outbox's."""
        self.engine = engine
        self.highwater = highwater
        self.topic = topic
        self.written = written
        self.extra = extra if extra is not None else {}
        self.max_pending = max_pending
        self.capacity = asyncio.Event()
        self.capacity.set()
        self.pauses = 0  # times the sources were paused (GET /metrics)

    def backlog(self) -> int:
        """Commands in this worker's internal partitions not applied yet.

        The consumer's high watermark alone lags far behind while the
        invocations agent is busy (it is refreshed only by fetches, which
        Faust stops while the agent's buffer is full): the sources agent
        could then turn tens of thousands of records into commands before
        the bound saw one. The offsets of this worker's own acked sends
        close that gap. A record holding a batch of commands counts as the
        commands it holds (``extra``: those beyond the first, per record).
        """
        topic = self.topic()
        total = 0
        applied = self.engine.applied
        live = self.engine.live_partitions()
        for p in live:
            highwater = self.highwater(TP(topic, p))
            last = max(-1 if highwater is None else highwater - 1, self.written.get(p, -1))
            done = applied.get(p, -1)
            total += max(0, last - done)
            batches = self.extra.get(p)
            if batches:  # acks come in any order: keep the records not applied yet
                batches = self.extra[p] = deque(b for b in batches if b[0] > done)
                total += sum(n for _, n in batches)
        for p in [p for p in self.extra if p not in live]:
            del self.extra[p]  # sent to a partition another worker applies
        return total

    def pending(self) -> int:
        """Work accepted but not started: queued invocations plus unapplied commands."""
        return self.engine.pending_count() + self.backlog()

    async def admit(self, full: Callable[[], bool] = lambda: False) -> None:
        """Hold the caller (the sources agent) while too much work is pending and its buffer has room."""
        pending = self.pending()
        if pending > self.max_pending and self.capacity.is_set():
            log.info("Pausing sources pending=%d bound=%d", pending, self.max_pending)
            self.capacity.clear()
            self.pauses += 1
        while not self.capacity.is_set() and not full():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.capacity.wait(), FULL_CHECK)

    def tick(self) -> None:
        """Resume the sources once pending work fell to half the bound."""
        if not self.capacity.is_set() and (pending := self.pending()) <= self.max_pending // 2:
            log.info("Resuming sources pending=%d", pending)
            self.capacity.set()
