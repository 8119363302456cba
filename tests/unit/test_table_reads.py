"""A table read is one RocksDB read, with Faust's answers (``PositionedTable.get``, ``faust_readers.read_row``).

On Faust's real RocksDB store (no broker). Faust's own path is the oracle:
``Mapping.get`` over mode's ``ManagedUserDict.__getitem__`` (``key in store``,
then ``store[key]``), which a Faust table answers ``get`` and ``[]`` with.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.streams import _current_event
from faust.types import TP
from mode.utils.collections import ManagedUserDict

from streamapp.runtime import changelog, faust_readers
from streamapp.runtime.store import Tables

TOPIC = "test-reads-invocations"
ROW = {"id": "inv_a", "status": "pending", "journal": [], "payload": {"n": 1}}


@pytest.fixture
def tables(tmp_path: Path) -> Iterator[Tables]:
    loop = asyncio.new_event_loop()  # Faust's tables want a current loop; async tests before may have unset it
    asyncio.set_event_loop(loop)
    app = faust.App("test-reads", broker="kafka://127.0.0.1:1", store="rocksdb://", datadir=str(tmp_path),
                    web_enabled=False)
    tables = Tables(app, 2)
    tables.counted = changelog.table(  # type: ignore[attr-defined]
        app, tables.positions, "counted", default=dict, partitions=2,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"))
    for table in (*tables.all, tables.counted):  # type: ignore[attr-defined]
        table._verified_source_topics_for_partitions.add(TOPIC)
    yield tables
    for table in (*tables.all, tables.counted):  # type: ignore[attr-defined]
        for db in table.data._dbs.values():
            db.close()
    tables.expiry.close()
    asyncio.set_event_loop(None)
    loop.close()


class _Event:
    def __init__(self, partition: int) -> None:
        self.message = types.SimpleNamespace(partition=partition, topic=TOPIC)


@contextlib.contextmanager
def in_event(partition: int) -> Iterator[None]:
    """Inside the invocations agent's iteration over a record of ``partition``."""
    event = _Event(partition)
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)


class CountingDB:
    """A partition's RocksDB, counting the reads of a row."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.reads = 0

    def get(self, key: bytes) -> Any:
        self.reads += 1
        return self.db.get(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def counting(table: Any) -> list[CountingDB]:
    dbs = table.data._dbs
    for p in list(dbs):
        dbs[p] = CountingDB(dbs[p])
    return list(dbs.values())


def reads(dbs: list[CountingDB]) -> int:
    total = sum(db.reads for db in dbs)
    for db in dbs:
        db.reads = 0
    return total


def faust_get(table: Any, key: str, default: Any = None) -> Any:
    """What Faust's ``Table.get`` answers (``Mapping.get`` over ``ManagedUserDict.__getitem__``)."""
    try:
        return ManagedUserDict.__getitem__(table, key)
    except KeyError:
        return default


def faust_item(table: Any, key: str) -> Any:
    """What Faust's ``table[key]`` answers; ``KeyError`` as a value."""
    try:
        return ManagedUserDict.__getitem__(table, key)
    except KeyError as exc:
        return exc


def item(table: Any, key: str) -> Any:
    try:
        return table[key]
    except KeyError as exc:
        return exc


def test_get__one_rocksdb_read_for_a_row_where_faust_makes_two_and_no_more_for_a_missing_key(tables):
    invocations = tables.invocations
    with in_event(0):
        invocations["inv_a"] = ROW
    with in_event(1):
        invocations["inv_b"] = {**ROW, "id": "inv_b"}
    dbs = counting(invocations)
    for scope in (lambda: in_event(0), contextlib.nullcontext):  # in the agent, and outside (actors, HTTP)
        with scope():
            assert invocations.get("inv_a") == ROW
            assert reads(dbs) == 1
            assert invocations["inv_a"] == ROW
            assert reads(dbs) == 1
            assert faust_get(invocations, "inv_a") == ROW
            assert reads(dbs) == 2  # ``key in store``, then ``store[key]``
            assert invocations.get("inv_none") is None
            missing = reads(dbs)
            assert faust_get(invocations, "inv_none") is None
            assert missing == reads(dbs) <= 1  # outside, RocksDB's bloom filters may answer without a read


def test_get__the_same_answers_as_faust_for_rows_missing_keys_and_other_partitions(tables):
    invocations = tables.invocations
    with in_event(0):
        invocations["inv_a"] = ROW
    with in_event(1):
        invocations["inv_b"] = {**ROW, "id": "inv_b"}
    cases = [
        (0, "inv_a", ROW),  # a row of the event's partition
        (0, "inv_b", None),  # a row of another partition: the agent reads its own partition only
        (1, "inv_b", {**ROW, "id": "inv_b"}),
        (None, "inv_a", ROW),  # outside an event: every partition open here
        (None, "inv_b", {**ROW, "id": "inv_b"}),
        (None, "inv_none", None),
        (0, "inv_none", None),
    ]
    for partition, key, expected in cases:
        with in_event(partition) if partition is not None else contextlib.nullcontext():
            assert invocations.get(key) == faust_get(invocations, key) == expected, (partition, key)
            assert invocations.get(key, "dflt") == faust_get(invocations, key, "dflt") == (
                "dflt" if expected is None else expected)
            got, faust_got = item(invocations, key), faust_item(invocations, key)
            if expected is None:
                assert isinstance(got, KeyError) and isinstance(faust_got, KeyError) and got.args == faust_got.args
            else:
                assert got == faust_got == expected
            assert (key in invocations) is (expected is not None)


def test_get__a_partition_no_longer_assigned_here_answers_as_faust_does(tables):
    invocations = tables.invocations
    with in_event(1):
        invocations["inv_b"] = ROW
    assert invocations.get("inv_b") == ROW  # noted: the key's partition
    invocations.data.revoke_partitions(invocations, {TP(invocations.changelog_topic.get_topic_name(), 1)})
    assert invocations.get("inv_b") is None and faust_get(invocations, "inv_b") is None
    assert invocations.get("inv_b", 7) == faust_get(invocations, "inv_b", 7) == 7
    assert isinstance(item(invocations, "inv_b"), KeyError)
    with in_event(1):  # the agent reads the partition of its event: Faust opens its DB again
        assert invocations.get("inv_b") == faust_get(invocations, "inv_b") == ROW


def test_get__a_table_with_a_default_answers_default_for_a_missing_key_and_writes_nothing(tables):
    counted = tables.counted
    with in_event(0):
        counted["k"] = {"n": 1}
        assert counted.get("k") == faust_get(counted, "k") == {"n": 1}
        # Faust's ``__missing__``: the table's ``default()``, for ``get`` (not the ``default`` argument) and ``[]``.
        assert counted.get("none") == faust_get(counted, "none") == {}
        assert counted.get("none", 5) == faust_get(counted, "none", 5) == {}
        assert counted["none"] == faust_item(counted, "none") == {}
        assert "none" not in counted
    assert {p: list(rows) for p, rows in counted.staged.items()} == {0: ["k"]}  # only the write is staged


def test_read_row__a_store_of_another_kind_is_asked_as_faust_asks_it():
    class Store(dict[str, Any]):
        asked: list[str] = []

        def __contains__(self, key: object) -> bool:
            self.asked.append("contains")
            return super().__contains__(key)

        def __getitem__(self, key: str) -> Any:
            self.asked.append("getitem")
            return super().__getitem__(key)

    store = Store(a=1)
    assert faust_readers.read_row(store, "a") == 1
    assert faust_readers.read_row(store, "b") is faust_readers.MISSING
    assert store.asked == ["contains", "getitem", "contains"]
