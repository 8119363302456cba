"""Delivery: which records the agents see, once and in order, and which offsets may be committed.

This module owns the commit protocol. Faust runs it (``Consumer.commit``
every ``broker_commit_interval``); what streamapp adds keeps every step below
true. The steps, in the order they happen:

Source record (topic subscribed to a handler), at least once:
  1. the offset guard admits it (``admit``): the first record of a partition
     is checked against the group's committed offset (``start_offset``), a
     jump is checked against the broker (``probe``) and sought back
     (``seek``) when records lie in between, a record read again is skipped;
  2. it is decoded and validated, else dead-lettered with its reason;
  3. its ``invoke`` command is produced to the internal topic and the broker
     acknowledges it (acks=all): the invocation is durable in its key's inbox;
  4. the agent marks it handled (``handled``); the ack gate lets Faust count
     an ack only for a handled record (``ackable``; Faust acks records its
     stream skipped around a rebalance too);
  5. Faust's commit flushes the producer and commits, per partition, the
     highest offset below which every record was acked. The sources agent
     takes records in offset order, so the commit never passes an undurable
     record.

Internal command, exactly once in effect:
  1. admitted by the invocations agent's guard as above;
     (or, for a command this worker wrote, taken at the broker's ack when
     the guard expects its offset next and applied there: ``take``,
     ``runtime/ackapply.py``; the copy read back is then skipped as
     handled already and goes on to step 3);
  2. applied to the tables: its rows are written to the local stores and
     staged for the changelogs, each naming the command; a later write of
     the same row before the next flush replaces the staged one
     (``runtime/changelog.py``);
  3. marked handled, so Faust may count its ack;
  4. Faust's commit flushes the producer: the staged rows are queued as
     record batches, one per changelog partition (the net effect of the
     commands applied since the last flush, in the order of their last
     writes; ``flush.send_rows``), and every record and batch queued
     before the flush began is acknowledged (``runtime/flush.py``; Faust's
     own flush can return early), then commits the command's offset. A crash before the
     commit replays the command; applying is idempotent (ids, statuses,
     journal indexes, epochs).

On a rebalance the guards forget the partitions that moved away, and every
partition when generations were skipped (this worker was out of the group:
another one may have consumed them meanwhile); after a stall they forget
everything (``forget``). Faust's own view of compaction gaps is corrected
where a guard filled a hole (``forget_gap``).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from faust.types import TP

from streamapp.runtime import faust_readers
from streamapp.runtime.offsets import OffsetGuard

log = logging.getLogger(__name__)

AGENTS = ("invocations", "sources")


class Delivery:
    """Offset guards, the ack gate and the Kafka clients they ask (admin, prober) for one worker."""

    def __init__(self, app: Any, kafka: Mapping[str, Any]) -> None:
        self.app = app
        self.kafka = kafka  # client options: servers and security (runtime/connection.py)
        self.guards = {
            name: OffsetGuard(name, self.seek, self.start_offset, self.forget_gap, self.overtaken, self.probe)
            for name in AGENTS
        }
        # Records the agents handled (or had handled before): only their acks count.
        self.handled: weakref.WeakSet[Any] = weakref.WeakSet()
        self.gated_topics: dict[str, OffsetGuard] = {}  # topic -> the guard of the agent reading it
        self._admin: AIOKafkaAdminClient | None = None
        self._prober: AIOKafkaConsumer | None = None
        self._probing = asyncio.Lock()

    # -- the ack gate ------------------------------------------------------------------
    def gate(self, topics: Iterable[str], agent: str) -> None:
        """Acks of records of these topics (read by ``agent``) count only once the agent handled them."""
        for topic in topics:
            self.gated_topics[topic] = self.guards[agent]

    def ackable(self, message: Any) -> bool:
        """Whether the consumer may count ``message`` as processed (``faust_adapter.Consumer.ack``).

        A refused record the agent never took is told to its guard (``OffsetGuard.dropped``).
        """
        guard = self.gated_topics.get(message.topic)
        if guard is None:
            return True
        if message in self.handled:
            self.handled.discard(message)
            return True
        guard.dropped(message.tp, message.offset)
        return False

    def mark_handled(self, message: Any) -> None:
        self.handled.add(message)

    # -- what the guards forget --------------------------------------------------------
    def forget(self, keep: set[TP] | None = None) -> None:
        """Forget where each agent was in every partition not in ``keep`` (all of them when None)."""
        for guard in self.guards.values():
            if keep is None:
                guard.forget()
            else:
                guard.forget([tp for tp in list(guard.next) if tp not in keep])

    async def tick(self) -> None:
        for guard in self.guards.values():
            await guard.tick()

    # -- what the guards ask -----------------------------------------------------------
    async def seek(self, tp: TP, offset: int) -> None:
        try:
            await self.app.consumer.seek_wait({tp: offset})
        except Exception as exc:  # the partition moved meanwhile: the next owner reads it
            log.warning("Seek failed partition=%s offset=%s error=%r", tp, offset, exc)

    def overtaken(self, message: Any) -> bool:
        """Whether a rebalance began after ``message`` was fetched (Faust delivers it again)."""
        return bool(message.generation_id != self.app.consumer_generation_id
                    or not self.app.flow_control.is_active())

    def forget_gap(self, tp: TP, start: int, last: int) -> None:
        """A hole the guard filled was read again and acked record by record: not a compaction gap."""
        faust_readers.forget_gap(self.app.consumer, tp, start, last + 1)

    async def admin(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(**self.kafka)
            await self._admin.start()
        return self._admin

    async def start_offset(self, tp: TP) -> int | None:
        """Where this group starts reading ``tp``: its committed offset, else the log start."""
        try:
            admin = await self.admin()
            offsets = await asyncio.wait_for(
                admin.list_consumer_group_offsets(self.app.conf.id, partitions=[tp]), timeout=10)
            meta = offsets.get(tp)
            if meta is not None and meta.offset >= 0:
                return int(meta.offset)
            earliest = await asyncio.wait_for(self.app.consumer.earliest_offsets(tp), timeout=10)
            return int(earliest[tp])
        except Exception as exc:
            log.warning("Could not read the start offset partition=%s error=%r", tp, exc)
            return None

    async def probe(self, tp: TP, offset: int) -> int | None:
        """The offset of the first record the broker holds at or after ``offset`` in ``tp``.

        Read with a reader of its own (no group), so Faust's pipeline cannot
        blur the answer. None when the broker could not say in time.
        """
        async with self._probing:
            try:
                if self._prober is None:
                    self._prober = AIOKafkaConsumer(
                        **self.kafka, enable_auto_commit=False, auto_offset_reset="earliest",
                        max_partition_fetch_bytes=self.app.conf.consumer_max_fetch_size)
                    await self._prober.start()
                self._prober.assign([tp])
                self._prober.seek(tp, offset)
                records = await self._prober.getmany(tp, timeout_ms=5000, max_records=1)
                found = records.get(tp)
                return int(found[0].offset) if found else None
            except Exception as exc:
                log.warning("Could not probe partition=%s offset=%s error=%r", tp, offset, exc)
                return None

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
        if self._prober is not None:
            await self._prober.stop()

