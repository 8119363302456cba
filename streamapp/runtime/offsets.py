"""Per-partition offset continuity for the agents.

Faust (0.15.3) can hand an agent a partition's records out of order around a
rebalance: a fetch that started before the rebalance returns after it, is
stamped with the new generation, and carries records from the old fetch
position, ahead of the committed offset; the seek to the committed offset
then delivers the skipped range afterwards. Processed in arrival order, that
breaks per-key order, and the engine's applied-offset watermark would then
discard the late records of a partition it kept.

An ``OffsetGuard`` keeps, for each partition the agent has been consuming,
the next offset it must see; for a partition it knows nothing of yet, that is
the group's committed offset (or the log start), asked for when the first
record arrives (and asked again until the broker answers). A record

- at that offset is accepted;
- below it was handled already (Faust delivers the uncommitted records of a
  partition kept through a rebalance again): skipped and acked as usual;
- above it reveals a hole: the guard seeks the partition back to the expected
  offset and drops records until that offset arrives. A dropped record is
  marked done without being acked to the consumer, so the committed offset
  cannot pass it; it is read again after the seek. Before seeking, the guard
  asks the broker directly (a separate reader) where the log continues: when
  nothing lies in between (transaction markers, compaction, retention), the
  jump is real and the record is accepted. Faust's own pipeline cannot answer
  that: it may drop the re-read records as old and hand over the later one
  again.

Holes are not only a rebalance matter: Faust also drops records inside one
consumer generation (records queued when a rebalance starts, a fetch cut
short when the generation changes, a worker frozen and woken), so every jump
is checked against the broker. On a topic with transaction markers that costs
one probe per marker.

A dropped record with nothing after it reveals no jump: Faust's stream
skips records it delivers while a rebalance is under way or that were fetched
under an older generation, and acks them; for a partition this worker keeps,
nothing fetches them again. The ack gate tells the guard (``dropped``) of
every record whose ack it refused although the agent never took it (at or
past the offset expected next): that opens a hole, which ``tick`` seeks back
to after ``RESEEK_AFTER`` unless the record arrives meanwhile. Records can
also vanish without an ack: Faust clears its stream queues when the flow
resumes after a rebalance. For that, ``tick`` compares the offset the
consumer has handed over (``handed_over``) with the one the agent expects:
read past it for ``STUCK_AFTER`` seconds while the agent was neither
``busy`` (a sources batch awaiting its acks holds the records behind it) nor
``paused`` (fenced, or Faust's flow suspended by a rebalance), the records
between were lost on the way, and the guard seeks back. Without these, the
records waited for a later record of their partition (a worker that joined
while HTTP calls waited on their commands stalled them for 90 s; a source
record lost so waited for the next event of its partition).

While a hole is open the guard seeks again every ``RESEEK_AFTER`` seconds:
records already in Faust's pipeline when it sought can move Faust's read
position past the range again (Faust then drops the re-read records as old).

The owner drops the expectation of partitions this worker loses, and of all
partitions when a rebalance skipped generations (this worker was out of the
group, so another one may have consumed them meanwhile).

``take`` lets the owner apply a record it wrote itself as soon as the broker
acknowledges it, before the agent reads it back: only when it is the very
record the guard expects next (no hole open, no probe under way), so nothing
of the partition comes between. The guard then expects the one after it, and
the copy read back later is skipped as handled already (and acked, so the
commit moves past it as usual).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from faust.types import TP

from streamapp.runtime import faust_readers

log = logging.getLogger(__name__)

RESEEK_AFTER = 1.0
STUCK_AFTER = 2.0


@dataclass
class Hole:
    expected: int  # first offset not seen yet
    last: int  # highest offset dropped while the hole is open
    sought_at: float = 0.0
    sought: int = 0
    probed: bool = True  # whether the broker said where the log continues (else ask again on the next seek)
    probe_first: bool = False  # ask the broker before the first seek too (``dropped``: records may lie between)


class OffsetGuard:
    def __init__(self, name: str, seek: Callable[[TP, int], Awaitable[None]],
                 baseline: Callable[[TP], Awaitable[int | None]],
                 on_close: Callable[[TP, int, int], None] | None = None,
                 stale: Callable[[Any], bool] | None = None,
                 probe: Callable[[TP, int], Awaitable[int | None]] | None = None) -> None:
        self.name = name
        self._seek = seek
        self._baseline = baseline
        self._stale = stale  # whether Faust will deliver this record again (a rebalance began)
        self._probe_fn = probe  # the broker's first offset at or after one (None: could not tell)
        self._on_close = on_close
        self.next: dict[TP, int] = {}
        self.holes: dict[TP, Hole] = {}
        self.replayed = 0  # records skipped because they were handled already (or taken: ``take``)
        self.real_holes = 0  # jumps the broker confirmed (nothing in between)
        self.taken = 0  # records applied from the writer's ack, before they were read back
        self._probing: set[TP] = set()  # partitions whose continuation the broker is being asked for
        # The consumer's last read offset of a partition (set by the owner): past ``next`` for
        # ``STUCK_AFTER`` seconds, the records between were dropped on their way to the agent.
        self.handed_over: Callable[[TP], int | None] | None = None
        self.paused: Callable[[], bool] | None = None  # while true, the agent leaves records aside on purpose
        self.busy = False  # set by the agent while it works on records it took (they may hold later ones up)
        self._waiting: dict[TP, tuple[int, float]] = {}  # expected offset, since when the consumer read past it

    def take(self, tp: TP, offset: int) -> bool:
        """Whether the record at ``offset`` may be handled now, ahead of its delivery; if so, expect the next.

        True only when it is the next record expected (every earlier one was
        handled), with no hole open and no probe under way for ``tp``.
        """
        if self.next.get(tp) != offset or tp in self.holes or tp in self._probing:
            return False
        self.next[tp] = offset + 1
        self.taken += 1
        return True

    def forget(self, tps: Iterable[TP] | None = None) -> None:
        """Drop what the guard expects of ``tps`` (all partitions when None)."""
        if tps is None:
            self.next.clear()
            self.holes.clear()
            self._waiting.clear()
            return
        for tp in tps:
            self.next.pop(tp, None)
            self.holes.pop(tp, None)
            self._waiting.pop(tp, None)

    def restart_at(self, tp: TP, offset: int, *, probe: bool = False) -> None:
        """Read ``tp`` again from ``offset`` (a recreated topic): seek there until that record arrives.

        A seek made now can be undone by one Faust makes later (its recovery
        seeks every partition to the group's committed offset, which for a
        recreated topic is the old incarnation's); and with nothing after
        the record, no later record would reveal the gap. So it is kept as
        an open hole: ``tick`` seeks again every ``RESEEK_AFTER`` seconds
        until the record at ``offset`` is admitted. With ``probe`` (``offset``
        is a guess, such as 0 for a topic just created), each seek after the
        first asks the broker where the log really starts.
        """
        self.next[tp] = offset
        self.holes[tp] = Hole(offset, offset - 1, probed=not probe)

    def dropped(self, tp: TP, offset: int) -> None:
        """A record of ``tp`` the agent did not take was done with (its ack refused): read it again if nothing will.

        At or past the offset expected next, with no hole open, the record
        never reached the agent (Faust's stream skipped it around a
        rebalance). That opens a hole at the expected offset: ``tick`` seeks
        back to it after ``RESEEK_AFTER`` seconds, unless it arrives first.
        """
        expected = self.next.get(tp)
        if expected is None or offset < expected or tp in self.holes:
            return
        log.info("Record dropped before the agent took it agent=%s partition=%s offset=%d expected=%d: "
                 "reading again from the expected offset unless it arrives", self.name, tp.partition, offset, expected)
        self.holes[tp] = Hole(expected, offset, sought_at=time.monotonic(), probed=False, probe_first=True)

    async def admit(self, message: Any) -> bool:
        """Whether to process ``message`` now. Call once per record, in delivery order."""
        tp, offset = message.tp, message.offset
        expected = self.next.get(tp)
        if expected is None:
            found = await self._start_of(message)
            if found is None:  # a rebalance overtook this record: Faust delivers it again
                faust_readers.mark_done(message)
                return False
            expected = self.next[tp] = found
        if offset == expected:
            self._accept(tp, offset)
            return True
        if offset < expected:
            self.replayed += 1
            return False
        hole = self.holes.get(tp)
        if hole is None or hole.expected != expected:
            expected, probed = await self._past_gap(tp, expected)
            if offset == expected:
                self._accept(tp, offset)
                return True
            hole = self.holes[tp] = Hole(expected, offset, probed=probed)
            log.warning("Offset hole agent=%s partition=%s expected=%d got=%d: seeking back",
                        self.name, tp.partition, expected, offset)
            await self._seek_back(tp, hole)
        hole.last = max(hole.last, offset)
        faust_readers.mark_done(message)  # done with this delivery, but not acked: the commit stays below the hole
        if time.monotonic() - hole.sought_at > RESEEK_AFTER:
            await self._seek_back(tp, hole)
        return False

    async def tick(self) -> None:
        """Seek again for holes that stayed open (their records may never reach the agent); find stuck partitions."""
        now = time.monotonic()
        for tp, hole in list(self.holes.items()):
            if now - hole.sought_at > RESEEK_AFTER:
                await self._seek_back(tp, hole)
        if self.handed_over is None:
            return
        if self.busy or (self.paused is not None and self.paused()):
            self._waiting.clear()  # records may wait on purpose now: idleness is counted afresh
            return
        for tp, expected in list(self.next.items()):
            read = self.handed_over(tp)
            if read is None or read < expected or tp in self.holes or tp in self._probing:
                self._waiting.pop(tp, None)
                continue
            since = self._waiting.get(tp)
            if since is None or since[0] != expected:
                self._waiting[tp] = (expected, now)
            elif now - since[1] > STUCK_AFTER:
                del self._waiting[tp]
                log.warning("Records read but never delivered agent=%s partition=%s expected=%d read=%d: "
                            "seeking back", self.name, tp.partition, expected, read)
                hole = self.holes[tp] = Hole(expected, read, probed=False, probe_first=True)
                await self._seek_back(tp, hole)

    async def _start_of(self, message: Any) -> int | None:
        """The partition's start offset; None once a rebalance overtook the record."""
        delay = 0.2
        while True:
            start = await self._baseline(message.tp)
            if start is not None:
                log.info("Reading from offset agent=%s partition=%s start=%d first=%d",
                         self.name, message.tp.partition, start, message.offset)
                return start
            if self._stale is not None and self._stale(message):
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _past_gap(self, tp: TP, expected: int) -> tuple[int, bool]:
        """Ask the broker where the log continues from ``expected``; move past offsets it does not hold.

        Returns the offset to expect now, and whether the broker answered.
        """
        self._probing.add(tp)
        try:
            present = await self._probe_fn(tp, expected) if self._probe_fn is not None else None
        finally:
            self._probing.discard(tp)
        if present is not None and present > expected:
            self.real_holes += 1
            log.info("Offset gap in the log agent=%s partition=%s from=%d to=%d",
                     self.name, tp.partition, expected, present)
            expected = self.next[tp] = present
        return expected, present is not None

    def _accept(self, tp: TP, offset: int) -> None:
        self.next[tp] = offset + 1
        hole = self.holes.pop(tp, None)
        if hole is not None:
            log.info("Offset hole closed agent=%s partition=%s at=%d dropped_up_to=%d seeks=%d",
                     self.name, tp.partition, offset, hole.last, hole.sought)
            if self._on_close is not None:
                self._on_close(tp, hole.expected, hole.last)

    async def _seek_back(self, tp: TP, hole: Hole) -> None:
        if not hole.probed and (hole.sought or hole.probe_first):
            hole.expected, hole.probed = await self._past_gap(tp, hole.expected)
        hole.sought_at = time.monotonic()
        hole.sought += 1
        await self._seek(tp, hole.expected)
