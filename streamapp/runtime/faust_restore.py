"""Faust's changelog restore, in batches (its internals; checked against ``faust_adapter.TESTED``).

A restarted worker rebuilds its tables from the changelogs before it drives
a partition, and after an unclean stop that is every row (``startup``
drops the local tables). Faust's ``Recovery._slurp_changelogs`` takes the
changelog records one at a time: each costs an ``asyncio.wait_for`` on the
queue (a task of its own), a check over every active changelog partition
whether recovery is done (a ``Counter`` built from all of them), the same
for the standbys, and two clock reads. With six tables over eight
partitions that is about 170 µs a record, most of a restart's time.

``BatchedRestore._slurp_changelogs`` is the same loop over what the queue
holds at once (up to ``RESTORE_BATCH`` records): every record is applied as
Faust applies it (its offset kept, buffered, the buffer written to the store
when full, a table's changelog-event hook awaited when it has one), and the
end of recovery and the standbys' readiness are checked once per batch. The
end is signalled only when no active partition has records left, exactly as
before, and the buffers are flushed first (``flush_buffers``), so a batch
can never signal an end that a record in it had not reached. Records of a
partition neither active nor standby (a rebalance took it) are skipped
with a warning; Faust's loop applied them to the previous record's table.

````BatchedRestore.on_recovery_completed`` is Faust's, except that it keeps
the changelog records queued while it runs. Faust's ends with
``flow_control.resume()``, which empties every queue it manages, the
changelog queue included, although no changelog partition was sought since
the standbys were: the standbys' records fetched meanwhile (the recovery's
table callbacks and the seek of the streams are awaited in between) were
dropped, their offsets never seen, and the standbys read on past them. A
standby so missing tombstones later became active with invocations its
changelog had finished, and ran them again (a 10-minute chaos run). The
other empties stay: each follows a seek of the partitions it concerns.

``Store`` is Faust's RocksDB store (the scheme ``streamapp-rocksdb``, which
the runtime's app uses), except that a rebalance revoking none of a table's
open partitions does not run the garbage collector. Faust's runs
``gc.collect()`` for each table on every rebalance (to close the databases of
revoked partitions, whose handles it only drops); with six tables that was a
quarter of a second of a restart, where nothing is open yet.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import Any

from faust import stores
from faust.stores.rocksdb import Store as FaustStore
from faust.tables.recovery import Recovery as FaustRecovery
from faust.utils.tracing import finish_span
from mode import Service

log = logging.getLogger(__name__)

STORE_SCHEME = "streamapp-rocksdb"
RESTORE_BATCH = 1000  # changelog records applied between two end-of-recovery checks
QUIET_FOR = 5.0  # s without a changelog record before the end is checked on a timeout (Faust's)


class BatchedRestore(FaustRecovery):
    @Service.task  # Faust's is one of the service's background tasks: so is this one, under its name
    async def _slurp_changelogs(self) -> None:
        queue = self.tables.changelog_queue
        while not self.should_stop:
            try:
                self.signal_recovery_end.clear()
                try:
                    first = await asyncio.wait_for(queue.get(), timeout=QUIET_FOR)
                except TimeoutError:
                    if self.should_stop:
                        return
                    self._end_if_done()
                    continue
                batch = [first]
                while len(batch) < RESTORE_BATCH and not queue.empty():
                    batch.append(queue.get_nowait())
                await self._apply_batch(batch)
                self._end_if_done()
                self._standbys_if_done()
            except Exception as exc:  # Faust's loop logs and goes on, as here
                log.warning("Error in recovery: %r", exc)

    async def _apply_batch(self, batch: list[Any]) -> None:
        now = monotonic()
        active_tps, standby_tps, tp_to_table = self.active_tps, self.standby_tps, self.tp_to_table
        buffers, sizes = self.buffers, self.buffer_sizes
        actives = 0
        for event in batch:
            message = event.message
            tp, offset = message.tp, message.offset
            if tp in active_tps:
                offsets, size_of = self.active_offsets, "recovery_buffer_size"
                self._active_events_received_at[tp] = now
                actives += 1
            elif tp in standby_tps:
                offsets, size_of = self.standby_offsets, "standby_buffer_size"
                self._standby_events_received_at.setdefault(tp, now)
            else:
                log.warning("Changelog record of a partition this worker neither restores nor stands by for: "
                            "%s offset %s skipped", tp, offset)
                continue
            table = tp_to_table[tp]
            size = sizes.get(tp)
            if size is None:
                size = sizes[tp] = getattr(table, size_of)
            seen = offsets.get(tp)
            if seen is not None and offset <= seen:
                continue
            offsets[tp] = offset
            buf = buffers[table]
            buf.append(event)
            if table._on_changelog_event is not None:  # type: ignore[attr-defined]
                await table.on_changelog_event(event)
            if len(buf) >= size:
                table.apply_changelog_batch(buf)
                buf.clear()
                self._last_flush_at = now
        if actives:
            # Faust samples the time between two active records for its "remaining" estimate.
            done = monotonic()
            self._processing_times.append((done - now) / actives)
            while len(self._processing_times) > self.num_samples_required_for_estimate:
                self._processing_times.popleft()
            self._last_active_event_processed_at = done

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        queue = self.tables.changelog_queue
        flow = self.app.flow_control
        flow._queues.discard(queue)  # mode's FlowControlEvent: the queues its resume() empties
        try:
            await super().on_recovery_completed(generation_id)
        finally:
            flow.manage_queue(queue)

    def _end_if_done(self) -> None:
        # Faust's ``_maybe_signal_recovery_end`` (a closure there); transactions are not used here
        # (processing_guarantee at_least_once), so its aborted-transaction fixup never applies.
        if self.in_recovery and not self.need_recovery():
            self.flush_buffers()
            self._set_recovery_ended()
            if self._actives_span is not None:
                self._actives_span.set_tag("Actives-Ready", True)
            self.signal_recovery_end.set()

    def _standbys_if_done(self) -> None:
        # Faust's, as it stands after each record there.
        ready = self._standbys_span is None and self.tables.standbys_ready
        if not ready and not self.standby_remaining_total():
            if self._standbys_span is not None:
                finish_span(self._standbys_span)
                self._standbys_span = None
            self.tables.on_standbys_ready()


class Store(FaustStore):
    def revoke_partitions(self, table: Any, tps: Any) -> None:
        topics = table.changelog_topic.topics
        if any(tp.topic in topics and tp.partition in self._dbs for tp in tps):
            super().revoke_partitions(table, tps)


stores.STORES[STORE_SCHEME] = f"{__name__}:Store"
