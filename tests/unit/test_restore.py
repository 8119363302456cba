"""The changelog restore in batches (faust_restore.BatchedRestore) and the store without a needless gc."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.tables.recovery import Recovery as FaustRecovery
from faust.types import TP

from streamapp.runtime import faust_restore

ACTIVE, STANDBY, GONE = TP("t-changelog", 0), TP("t-changelog", 1), TP("t-changelog", 2)


class Table:
    recovery_buffer_size = 3
    standby_buffer_size = 2

    def __init__(self) -> None:
        self.applied: list[list[tuple[TP, int]]] = []  # each batch written to the store
        self.hooked: list[int] = []
        self._on_changelog_event: Any = None

    def apply_changelog_batch(self, batch: list[Any]) -> None:
        if batch:
            self.applied.append([(e.message.tp, e.message.offset) for e in batch])

    async def on_changelog_event(self, event: Any) -> None:
        self.hooked.append(event.message.offset)


def event(tp: TP, offset: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))


@pytest.fixture
def restore(tmp_path: Path) -> Any:
    app = faust.App("test-restore", broker="kafka://127.0.0.1:1", datadir=str(tmp_path), web_enabled=False)
    recovery = faust_restore.BatchedRestore(app, app.tables)
    table, standby = Table(), Table()
    recovery.active_tps, recovery.standby_tps = {ACTIVE}, {STANDBY}
    recovery.tp_to_table = {ACTIVE: table, STANDBY: standby}
    recovery.active_offsets[ACTIVE] = -1
    recovery.active_highwaters[ACTIVE] = 6  # offsets 0..6 to read
    recovery.standby_offsets[STANDBY] = -1
    recovery.standby_highwaters[STANDBY] = 1
    recovery._set_recovery_started()
    return recovery, table, standby


async def test_batch__applied_as_faust_applies_records_and_the_end_waits_for_the_highwater(restore: Any) -> None:
    recovery, table, standby = restore
    await recovery._apply_batch([event(ACTIVE, 0), event(ACTIVE, 1), event(STANDBY, 0), event(GONE, 5),
                                 event(ACTIVE, 2), event(ACTIVE, 1), event(STANDBY, 1)])
    # Store writes when a table's buffer is full (3 for actives, 2 for standbys); a replayed offset is
    # skipped; a partition neither active nor standby is skipped, not applied to another's table.
    assert table.applied == [[(ACTIVE, 0), (ACTIVE, 1), (ACTIVE, 2)]]
    assert standby.applied == [[(STANDBY, 0), (STANDBY, 1)]]
    assert recovery.active_offsets[ACTIVE] == 2 and recovery.standby_offsets[STANDBY] == 1
    assert GONE not in recovery.active_offsets and GONE not in recovery.standby_offsets
    recovery._end_if_done()
    assert recovery.in_recovery and not recovery.signal_recovery_end.is_set()  # offset 6 not reached

    await recovery._apply_batch([event(ACTIVE, 6)])
    recovery._end_if_done()
    assert not recovery.in_recovery and recovery.signal_recovery_end.is_set()
    # Ending flushes what the buffers still held, so no read record is left out of the store.
    assert table.applied[-1] == [(ACTIVE, 6)]


async def test_batch__a_table_hook_sees_every_applied_record(restore: Any) -> None:
    recovery, table, _ = restore
    table._on_changelog_event = table.on_changelog_event
    await recovery._apply_batch([event(ACTIVE, 0), event(ACTIVE, 0), event(ACTIVE, 1)])
    assert table.hooked == [0, 1]


async def test_loop__drains_the_queue_and_signals_the_end(restore: Any) -> None:
    recovery, table, _ = restore
    queue = recovery.tables.changelog_queue
    for offset in range(7):
        queue.put_nowait(event(ACTIVE, offset))
    queue.put_nowait(event(STANDBY, 0))
    queue.put_nowait(event(STANDBY, 1))
    ready: list[bool] = []
    recovery.tables.on_standbys_ready = lambda: ready.append(True)
    loop_task = asyncio.ensure_future(faust_restore.BatchedRestore._slurp_changelogs(recovery))
    try:
        await asyncio.wait_for(recovery.signal_recovery_end.wait(), timeout=5)
    finally:
        recovery._stopped.set()
        loop_task.cancel()
    assert sorted(o for batch in table.applied for tp, o in batch if tp == ACTIVE) == list(range(7))
    assert queue.empty() and ready == [True]


def test_store__no_gc_when_no_open_partition_is_revoked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    collected: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(1) or 0)
    store = faust_restore.Store.__new__(faust_restore.Store)
    store._dbs = {}
    store.logger = SimpleNamespace(info=lambda *a: None)  # type: ignore[assignment]
    table = SimpleNamespace(changelog_topic=SimpleNamespace(topics={"t-changelog"}))
    store.revoke_partitions(table, {ACTIVE, STANDBY})  # nothing open: Faust's would gc
    assert collected == []
    store._dbs = {0: object()}
    store.revoke_partitions(table, {ACTIVE})
    assert collected == [1] and store._dbs == {}


async def _noop(*args: Any) -> None:
    return None


def _completing_app(app: Any, delivered: list[Any]) -> Any:
    """What ``on_recovery_completed`` uses of the app; the streams' seek delivers ``delivered`` meanwhile."""
    queue = app.tables.changelog_queue

    async def perform_seek() -> None:  # awaited between the standbys' resume and the end: the fetcher runs
        for record in delivered:
            queue.put_nowait(record)

    consumer = SimpleNamespace(assignment=lambda: {TP("source", 0)}, resume_partitions=lambda tps: None,
                               perform_seek=perform_seek, resume_flow=lambda: None)
    return SimpleNamespace(on_rebalance_complete=SimpleNamespace(send=_noop), consumer=consumer,
                           consumer_generation_id=0, flow_control=app.flow_control, conf=app.conf,
                           _fetcher=SimpleNamespace(maybe_start=_noop), on_rebalance_end=lambda: None,
                           assignor=SimpleNamespace(assigned_standbys=lambda: {STANDBY}))


async def test_recovery_completed__keeps_the_standby_records_queued_meanwhile(restore: Any) -> None:
    recovery, _, standby = restore
    app = recovery.app
    queue = app.tables.changelog_queue
    records = [event(STANDBY, 2), event(STANDBY, 3)]
    recovery.app = _completing_app(app, records)
    # Faust's own drops them: its last flow_control.resume() empties the changelog queue.
    await FaustRecovery.on_recovery_completed(recovery)
    assert queue.empty()

    await recovery.on_recovery_completed()
    assert [queue.get_nowait() for _ in range(queue.qsize())] == records
    await recovery._apply_batch(records)
    assert recovery.standby_offsets[STANDBY] == 3 and standby.applied == [[(STANDBY, 2), (STANDBY, 3)]]
    # The queue is managed again: a later resume (after a seek) empties it, as Faust means it to.
    queue.put_nowait(event(STANDBY, 4))
    app.flow_control.resume()
    assert queue.empty()
