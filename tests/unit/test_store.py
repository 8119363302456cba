"""The per-partition reads of streamapp/runtime/store.py on Faust's real RocksDB store (no broker)."""

from __future__ import annotations

import asyncio
import types
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.streams import _current_event
from faust.types import TP

from streamapp.runtime.store import Tables, expiry_bound, expiry_key

TOPIC = "test-store-invocations"


class _Event:
    def __init__(self, partition: int) -> None:
        self.message = types.SimpleNamespace(partition=partition, topic=TOPIC)


@pytest.fixture
def tables(tmp_path: Path) -> Iterator[Tables]:
    loop = asyncio.new_event_loop()  # Faust's tables want a current loop; async tests before may have unset it
    asyncio.set_event_loop(loop)
    app = faust.App("test-store", broker="kafka://127.0.0.1:1", store="rocksdb://", datadir=str(tmp_path),
                    web_enabled=False)
    tables = Tables(app, 2)
    app.producer.send_soon = lambda fut: None  # type: ignore[method-assign]  # the changelog is not under test
    tables.results._verified_source_topics_for_partitions.add(TOPIC)
    yield tables
    for db in tables.results.data._dbs.values():
        db.close()
    tables.expiry.close()
    asyncio.set_event_loop(None)
    loop.close()


def write(table: Any, partition: int, rows: dict[str, Any], deletes: tuple[str, ...] = ()) -> None:
    """Write as the invocations agent does: inside an event of ``partition``."""
    event = _Event(partition)
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        for key, value in rows.items():
            table[key] = value
        for key in deletes:
            del table[key]
    finally:
        _current_event.reset(token)


def test_partition_keys__one_partition_in_key_order_from_a_start_key_without_the_sweep_cursor(tables):
    index = tables.expiry
    late, early, same_ms = expiry_key(1_000.5, "b"), expiry_key(999.9995, "z"), expiry_key(1_000.5001, "a")
    write(index, 0, {late: "b", early: "z", same_ms: "a", expiry_key(2_000.0, "c"): "c"})
    write(index, 1, {expiry_key(1.0, "other"): "other"})
    tables.set_index_swept(0, "some-id")

    keys = list(Tables.partition_keys(index, 0))
    assert keys == [early, same_ms, late, expiry_key(2_000.0, "c")]
    assert list(Tables.partition_keys(index, 0, late)) == [late, expiry_key(2_000.0, "c")]
    write(index, 0, {}, deletes=(late,))
    assert list(Tables.partition_keys(index, 0, late)) == [expiry_key(2_000.0, "c")]  # a deleted start: the next
    assert [k for k in keys if k < expiry_bound(1_000.5)] == [early]


def test_partition_items__decoded_values_from_a_start_key(tables):
    write(tables.results, 1, {"id-b": {"finished": 2.0}, "id-a": {"finished": 1.0}, "id-c": {"finished": 3.0}})
    assert list(Tables.partition_items(tables.results, 1, "id-b")) == [
        ("id-b", {"finished": 2.0}), ("id-c", {"finished": 3.0})]
    assert [k for k, _ in Tables.partition_items(tables.results, 1)] == ["id-a", "id-b", "id-c"]
    assert list(Tables.partition_items(tables.results, 0)) == []


def test_partition_keys__the_offset_key_of_a_table_is_left_out(tables):
    write(tables.results, 0, {"id-a": {"finished": 1.0}})
    tables.results.data.set_persisted_offset(TP(tables.results.changelog_topic.get_topic_name(), 0), 41)
    assert list(Tables.partition_keys(tables.results, 0)) == ["id-a"]


def test_expiry_index__survives_a_close_and_a_dropped_partition_starts_anew(tables):
    write(tables.expiry, 0, {expiry_key(5.0, "x"): "x"})
    tables.set_index_swept(0, True)
    tables.expiry.close()  # a clean stop: written without a WAL, flushed here
    assert list(Tables.partition_keys(tables.expiry, 0)) == [expiry_key(5.0, "x")]
    assert tables.index_swept(0) is True
    tables.expiry.drop(0)
    assert list(Tables.partition_keys(tables.expiry, 0)) == [] and tables.index_swept(0) is None
