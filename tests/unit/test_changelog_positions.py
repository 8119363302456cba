"""Changelog records carry the command that wrote them; a restore skips a deposed writer's late records.

On Faust's real RocksDB store (no broker): the records a restore reads are
built as Faust's recovery hands them to the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import types
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.streams import _current_event
from faust.types import TP

from streamapp.runtime import changelog
from streamapp.runtime import store as store_module
from streamapp.runtime.store import Tables, expiry_key

TOPIC = "test-positions-invocations"


@pytest.fixture
def tables(tmp_path: Path) -> Iterator[Tables]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = faust.App("test-positions", broker="kafka://127.0.0.1:1", store="rocksdb://", datadir=str(tmp_path),
                    web_enabled=False)
    tables = Tables(app, 2)
    tables.sent = []  # type: ignore[attr-defined]
    for table in tables.all:
        table._verified_source_topics_for_partitions.add(TOPIC)
    yield tables
    for table in tables.all:
        for db in table.data._dbs.values():
            db.close()
    tables.expiry.close()
    asyncio.set_event_loop(None)
    loop.close()


def rows(table: Any, partition: int) -> dict[str, Any]:
    return dict(Tables.partition_items(table, partition))


class _Event:
    def __init__(self, partition: int) -> None:
        self.message = types.SimpleNamespace(partition=partition, topic=TOPIC)


def record(table: Any, partition: int, offset: int, key: str, value: bytes | None, at: int | None) -> Any:
    """A changelog event as Faust's recovery passes it to ``apply_changelog_batch``."""
    headers = [(changelog.HEADER, str(at).encode())] if at is not None else []
    tp = TP(table.changelog_topic.get_topic_name(), partition)
    message = types.SimpleNamespace(tp=tp, partition=partition, offset=offset, key=table.data._encode_key(key),
                                    value=value, headers=headers, topic=tp.topic)
    return types.SimpleNamespace(message=message, key=key, value=value, headers=headers)


def test_restore__a_deposed_writers_late_record_does_not_replace_its_successors(tables):
    state = tables.state
    # Worker A applied commands 10 and 11 and its records reached the log; its
    # record for command 12 sat in its producer while it was frozen. Worker B
    # read on from A's commit (11), applied 11, 12 and 13; then A woke up.
    state.apply_changelog_batch([
        record(state, 0, 0, "Svc/k", b'{"v": 10}', at=10),
        record(state, 0, 1, "Svc/k", b'{"v": 11}', at=11),
        record(state, 0, 2, "Svc/k", b'{"v": 11}', at=11),   # B: the same command again
        record(state, 0, 3, "Svc/k", b'{"v": 12}', at=12),
        record(state, 0, 4, "Svc/k", b'{"v": 13}', at=13),
        record(state, 0, 5, "Svc/k", b'{"v": 12}', at=12),   # A, woken: late
    ])
    assert rows(state, 0) == {"Svc/k": {"v": 13}}
    assert tables.positions.skipped == 1


def test_restore__a_late_tombstone_does_not_delete_a_row_written_after_it(tables):
    state = tables.state
    state.apply_changelog_batch([
        record(state, 1, 0, "Svc/k", b'{"v": 1}', at=5),
        record(state, 1, 1, "Svc/k", None, at=6),            # B deletes at 6 ...
        record(state, 1, 2, "Svc/k", b'{"v": 2}', at=9),     # ... and writes again at 9
        record(state, 1, 3, "Svc/k", None, at=6),            # A's late tombstone of command 6
    ])
    assert rows(state, 1) == {"Svc/k": {"v": 2}}


def test_restore__positions_are_per_changelog_partition_and_records_without_the_header_apply(tables):
    state = tables.state
    state.apply_changelog_batch([
        record(state, 0, 0, "a", b"1", at=50),
        record(state, 1, 0, "b", b"1", at=3),                # another partition: its own sequence
        record(state, 0, 1, "c", b"1", at=None),             # an earlier version's record
    ])
    assert (rows(state, 0), rows(state, 1)) == ({"a": 1, "c": 1}, {"b": 1})
    assert tables.positions.skipped == 0


def test_restore__a_full_restore_after_a_stall_forgets_the_positions(tables):
    state = tables.state
    state.apply_changelog_batch([record(state, 0, 0, "a", b"1", at=50)])
    tables.distrust_local()
    state.apply_changelog_batch([record(state, 0, 0, "a", b"1", at=50), record(state, 0, 1, "a", b"2", at=60)])
    assert rows(state, 0) == {"a": 2} and tables.positions.skipped == 0


@contextlib.contextmanager
def applying(tables: Tables, partition: int, at: int) -> Iterator[None]:
    """Inside the agent's iteration, applying the command at offset ``at`` of ``partition``."""
    tables.positions.applying[partition] = at
    event = _Event(partition)
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)


def send_staged(tables: Tables) -> int:
    """What a flush does first: take the staged rows, encoded (the producer sends them as record batches)."""
    taken = tables.take_staged()
    for rows in taken:
        assert rows.topic == rows.table.changelog_topic.get_topic_name()
        tables.sent.extend((rows.partition, *record) for record in rows.records)  # type: ignore[attr-defined]
    return sum(len(rows.records) for rows in taken)


def sent_rows(tables: Tables) -> list[tuple[int, str, Any, int]]:
    """What a flush sent: (partition, key, value or None, header offset), in order."""
    out = []
    for partition, key, value, headers in tables.sent:  # type: ignore[attr-defined]
        # serialized as the table's changelog records are
        out.append((partition, json.loads(key), value, int(dict(headers)[changelog.HEADER])))
    return out


def test_writes_carry_the_offset_of_the_command_being_applied(tables):
    with applying(tables, 1, 42):
        tables.state["Svc/k"] = {"v": 1}
    assert tables.sent == []  # staged until the producer's flush
    assert send_staged(tables) == 1
    (sent,) = tables.sent
    assert sent == (1, b'"Svc/k"', b'{"v":1}', [(changelog.HEADER, b"42")])
    # Its own writes count: a later restore of this partition skips records older than them.
    assert tables.positions.high[TP(tables.state.changelog_topic.get_topic_name(), 1)] == 42


def test_positions_survive_a_clean_stop_and_are_read_once(tables, tmp_path):
    tp = TP("t-changelog", 3)
    tables.positions.high[tp] = 7
    tables.positions.save(tmp_path)
    again = changelog.Positions()
    again.load(tmp_path)
    assert again.high == {tp: 7}
    assert not (tmp_path / changelog.POSITIONS_FILE).exists()


def test_staged_writes__a_flush_sends_the_net_effect_in_the_order_of_last_writes(tables):
    inv = tables.invocations
    with applying(tables, 0, 10):
        inv["a"] = {"status": "running"}          # created ...
    with applying(tables, 0, 11):
        inv["b"] = {"status": "running"}
        inv["a"] = {"status": "running", "journal": [1]}
    with applying(tables, 0, 12):
        del inv["a"]                              # ... and finished before the flush
    with applying(tables, 1, 5):
        inv["c"] = {"status": "sleeping"}
    # The local store has every write at once.
    assert rows(inv, 0) == {"b": {"status": "running"}} and rows(inv, 1) == {"c": {"status": "sleeping"}}

    assert send_staged(tables) == 3
    sent = sent_rows(tables)
    assert [(p, k, at) for p, k, _, at in sent] == [(0, "b", 11), (0, "a", 12), (1, "c", 5)]
    assert sent[1][2] is None  # "a": one tombstone for three writes
    # Per partition the header offsets never decrease (a restore relies on it).
    for p in (0, 1):
        ats = [at for q, _, _, at in sent if q == p]
        assert ats == sorted(ats)
    assert send_staged(tables) == 0  # nothing twice


def test_staged_writes__a_restore_of_what_the_flushes_sent_rebuilds_the_writers_tables(tables, tmp_path):
    """Random writes, flushes in between: replaying the changelog gives the writer's rows, per partition."""


    rng = random.Random(7)
    state = tables.state
    at = {0: 0, 1: 0}
    for _ in range(400):
        p = rng.choice((0, 1))
        at[p] += 1
        with applying(tables, p, at[p]):
            for _ in range(rng.randint(1, 3)):
                key = f"k{rng.randint(0, 9)}"
                if rng.random() < 0.3:
                    if state.get(key) is not None:
                        del state[key]
                else:
                    state[key] = {"v": rng.randint(0, 1000)}
        if rng.random() < 0.1:
            send_staged(tables)
    send_staged(tables)
    expected = {p: rows(state, p) for p in (0, 1)}

    fresh = Tables(faust.App("test-positions-2", broker="kafka://127.0.0.1:1", store="rocksdb://",
                             datadir=str(tmp_path / "again"), web_enabled=False), 2)
    try:
        batch = [record(fresh.state, p, offset, key, value, at=a)
                 for offset, (p, key, value, a) in enumerate(sent_rows(tables))]
        fresh.state.apply_changelog_batch(batch)
        assert {p: rows(fresh.state, p) for p in (0, 1)} == expected
        assert fresh.positions.skipped == 0
    finally:
        for table in fresh.all:
            for db in table.data._dbs.values():
                db.close()


def test_distrust_local__every_table_is_restored_from_its_start(tables):
    with applying(tables, 0, 1):
        for table in tables.all:
            table["k"] = {"v": 1}
    reset = tables.distrust_local()
    assert {tp.topic for tp in reset} == {t.changelog_topic.get_topic_name() for t in tables.all}


def index_of(tables: Tables, partition: int) -> list[str]:
    return list(Tables.partition_keys(tables.expiry, partition))


def test_results_records_say_when_their_invocation_finished(tables):
    with applying(tables, 0, 7):
        tables.results.put("i1", {"id": "i1", "status": "completed", "finished": 1_000.25})
    send_staged(tables)
    (_, _, _, headers), = tables.sent  # type: ignore[attr-defined]
    assert dict(headers) == {changelog.HEADER: b"7", store_module.FINISHED: b"1000.25"}


def test_restore__results_rows_applied_are_indexed_and_deleted_ones_leave_the_index(tables):
    results = tables.results

    def outcome(offset: int, inv_id: str, finished: float | None, header: bool = True) -> Any:
        if finished is None:
            return record(results, 0, offset, inv_id, None, at=offset)
        event = record(results, 0, offset, inv_id, json.dumps({"id": inv_id, "finished": finished}).encode(),
                       at=offset)
        if header:  # as this version writes them; an earlier one's records carry no finish time
            event.message.headers.append((store_module.FINISHED, repr(finished).encode()))
        return event

    results.apply_changelog_batch([outcome(0, "a", 1_000.0), outcome(1, "b", 1_001.0, header=False),
                                   outcome(2, "c", 1_002.0)])
    assert index_of(tables, 0) == [expiry_key(1_000.0, "a"), expiry_key(1_001.0, "b"), expiry_key(1_002.0, "c")]
    # "a" expired on its owner (a tombstone); "c" finished again later (expired, then run again);
    # "d" came and went within the batch.
    results.apply_changelog_batch([outcome(3, "a", None), outcome(4, "c", 2_000.0), outcome(5, "d", 2_001.0),
                                   outcome(6, "d", None)])
    assert index_of(tables, 0) == [expiry_key(1_001.0, "b"), expiry_key(2_000.0, "c")]
    assert sorted(rows(results, 0)) == ["b", "c"]
