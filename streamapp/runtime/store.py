"""The changelog-backed tables (RocksDB via rocksdict) and how they are read.

All tables are written only by the invocations agent, inside its stream
iteration, so each write lands in the partition of the command being applied
(co-partitioned with the internal topic).

    invocations   id -> record of an unfinished invocation (status, journal, ...)
    results       id -> outcome of a finished one (status, result or error);
                  also what deduplicates redelivered records
    timers        id -> {"wake_at", "p"}: the scheduled timers
    state         "Service/key" -> {name: value}, the key's user state
    meta          "p<N>" -> {"epoch"}: which activation drives partition N
                  (and, written by earlier versions, "expiry/p<N>", unused)

Beside them, not a changelog-backed table:

    expiry        "<finish time, ms, 15 digits>/<id>" -> id: the finished
                  invocations by finish time (RocksDB keeps keys sorted, so
                  expiry reads the oldest first and stops at the retention);
                  written and deleted with the results row, in the same apply,
                  and rebuilt from the results rows a restore applies
                  (``runtime/expiry_index.py``)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import faust
from faust.types import TP

from streamapp.runtime import changelog, faust_readers
from streamapp.runtime.expiry_index import LocalIndex

# One RocksDB per table and partition (6 tables x N partitions): Faust's
# defaults (64 MB write buffers, a 2 GB block cache each) let memory grow with
# every write. Small buffers flush to disk early; reads hit the OS page cache.
ROCKSDB_OPTIONS = {
    "write_buffer_size": 4 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "target_file_size_base": 16 * 1024 * 1024,
    "block_cache_size": 8 * 1024 * 1024,
    "block_cache_compressed_size": 0,
}


class Table(Protocol):
    """One changelog-backed table, as the state machine uses it (a Faust table, or a dict-like fake)."""

    def get(self, key: str, default: Any = None) -> Any: ...
    def __setitem__(self, key: str, value: Any) -> None: ...
    def put(self, key: str, value: Any, raw: bytes | None = None) -> None:
        """``self[key] = value``; ``raw``: its encoding, when the caller has it (``limits.check_row``)."""
    def __delitem__(self, key: str) -> None: ...
    def __contains__(self, key: object) -> bool: ...


class PartitionStore(Protocol):
    """The tables the partition state machine reads and writes (``Tables``; in tests, an in-memory store).

    Writes go to the partition of the command being applied; ``positions``
    is told which command that is, so each changelog record names it.
    """

    positions: changelog.Positions
    invocations: Table
    results: Table
    timers: Table
    state: Table
    meta: Table

    @property
    def expiry(self) -> Table:
        """The expiry index: a table to the state machine, not changelog-backed (``runtime/expiry_index.py``)."""

    def partition_items(self, table: Any, partition: int, start: str | None = None
                        ) -> Iterator[tuple[str, Any]]: ...

    def partition_keys(self, table: Any, partition: int, start: str | None = None) -> Iterator[str]: ...

    def index_swept(self, partition: int) -> str | bool | None:
        """How far results rows the expiry index did not see written were indexed (``expiry_index.SWEPT``)."""

    def set_index_swept(self, partition: int, cursor: str | bool) -> None: ...


FINISHED = "streamapp.finished"  # header of a results changelog record: its invocation's finish time


class ResultsTable(changelog.PositionedTable):
    """The results table: its records say when their invocation finished, and a restore indexes what it applies."""

    index: LocalIndex

    def row_headers(self, value: Any) -> list[tuple[str, bytes]]:
        finished = value.get("finished") if isinstance(value, dict) else None
        return [] if finished is None else [(FINISHED, repr(float(finished)).encode())]

    def before_restore(self, events: list[Any]) -> None:
        """Index the rows these records write, and drop the entries of the rows they replace or delete."""
        store = self.data
        latest: dict[tuple[int, str], float | None] = {}  # finish time of each row as of the records so far
        for event in events:
            message = event.message
            p = message.partition
            inv_id = str(faust_readers.decode_key(store, message.key))
            if (p, inv_id) in latest:
                before = latest[(p, inv_id)]
            else:
                before = _finished(faust_readers.get_raw(store, p, message.key))
            if message.value is None:
                after = None
            else:
                header = changelog.header_value(message.headers, FINISHED)
                after = float(header) if header is not None else _finished(message.value)
            if before is not None and before != after:
                self.index.remove(p, expiry_key(before, inv_id))
            if after is not None:
                self.index.add(p, expiry_key(after, inv_id), inv_id)
            latest[(p, inv_id)] = after


def _finished(raw: bytes | None) -> float | None:
    """The finish time in an encoded results row (None: no row, or none in it)."""
    if raw is None:
        return None
    try:
        finished = json.loads(raw).get("finished")
        return None if finished is None else float(finished)
    except (ValueError, TypeError, AttributeError):
        return None


class Tables:
    def __init__(self, app: faust.App, partitions: int) -> None:
        self.positions = changelog.Positions()  # which command wrote each changelog record (runtime/changelog.py)

        def table(name: str, help_: str, cls: type[changelog.PositionedTable] = changelog.PositionedTable) -> Any:
            schema: faust.Schema[str, Any] = faust.Schema(key_type=str, key_serializer="raw", value_serializer="json")
            return changelog.table(app, self.positions, name, cls, partitions=partitions, schema=schema, help=help_,
                                   options=dict(ROCKSDB_OPTIONS))

        self.invocations = table("invocations", "unfinished invocations")
        self.results = table("results", "finished invocations", ResultsTable)
        self.timers = table("timers", "scheduled timers")
        # Under the tables' data dir: an unclean stop drops it with them (startup.prepare_table_dir).
        self.expiry = LocalIndex(Path(app.conf.datadir) / "expiry-index")
        self.results.index = self.expiry
        self.state = table("state", "per-key user state")
        self.meta = table("meta", "partition epochs")
        self.all = (self.invocations, self.results, self.timers, self.state, self.meta)  # the changelog-backed

    def take_staged(self) -> list[changelog.StagedRows]:
        """The net effect of every table write since the last flush, encoded per changelog partition."""
        return [rows for table in self.all for rows in table.take_staged()]

    def distrust_local(self) -> list[TP]:
        """Make the next recovery read every changelog partition this worker holds from its start.

        Faust restores a table partition from the offset this worker last
        wrote to its changelog, assuming nobody else wrote before it. A
        worker frozen past its session breaks that: another worker drives
        its partitions meanwhile, and the frozen worker's buffered writes,
        sent when it wakes, land after the other's and move its offset past
        rows it never saw. Rows deleted meanwhile are deleted again by the
        replay while the changelog keeps their tombstones (its
        ``delete.retention.ms``, a day by default).
        """
        reset = []
        for table in self.all:
            store = table.data
            topic = table.changelog_topic.get_topic_name()
            for partition in faust_readers.open_partitions(store):
                tp = TP(topic, partition)
                store.set_persisted_offset(tp, -1)
                reset.append(tp)
        self.positions.forget(reset)
        return reset

    @staticmethod
    def partition_items(table: Any, partition: int, start: str | None = None) -> Iterator[tuple[str, Any]]:
        """Items of one partition's RocksDB store, in key order, from ``start`` (inclusive); lazy."""
        return faust_readers.items(table.data, partition, start)

    @staticmethod
    def partition_keys(table: Any, partition: int, start: str | None = None) -> Iterator[str]:
        """Keys of one partition's RocksDB store, in key order, from ``start``; no value is read."""
        if isinstance(table, LocalIndex):
            return table.keys(partition, start)
        return faust_readers.keys(table.data, partition, start)

    def index_swept(self, partition: int) -> str | bool | None:
        return self.expiry.swept(partition)

    def set_index_swept(self, partition: int, cursor: str | bool) -> None:
        self.expiry.set_swept(partition, cursor)


def expiry_key(finished: float, inv_id: str) -> str:
    """The expiry index key: sorts by finish time (whole ms, rounded down), then id."""
    return f"{int(finished * 1000):015d}/{inv_id}"


def expiry_bound(before: float) -> str:
    """Index keys below this one are of invocations finished before ``before``."""
    return f"{int(before * 1000):015d}"
