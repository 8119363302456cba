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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import faust
from faust.types import TP

# One RocksDB per table and partition (5 tables x N partitions): Faust's
# defaults (64 MB write buffers, a 2 GB block cache each) let memory grow with
# every write. Small buffers flush to disk early; reads hit the OS page cache.
ROCKSDB_OPTIONS = {
    "write_buffer_size": 4 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "target_file_size_base": 16 * 1024 * 1024,
    "block_cache_size": 8 * 1024 * 1024,
    "block_cache_compressed_size": 0,
}


class Tables:
    def __init__(self, app: faust.App, partitions: int) -> None:
        def table(name: str, help_: str) -> Any:
            schema: faust.Schema = faust.Schema(key_type=str, key_serializer="raw", value_serializer="json")
            return app.Table(name, partitions=partitions, schema=schema, help=help_, options=dict(ROCKSDB_OPTIONS))

        self.invocations = table("invocations", "unfinished invocations")
        self.results = table("results", "finished invocations")
        self.timers = table("timers", "scheduled timers")
        self.state = table("state", "per-key user state")
        self.meta = table("meta", "partition epochs")

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
        for table in (self.invocations, self.results, self.timers, self.state, self.meta):
            store = table.data
            topic = table.changelog_topic.get_topic_name()
            for partition in list(store._dbs):  # the partitions with a local DB open
                tp = TP(topic, partition)
                store.set_persisted_offset(tp, -1)
                reset.append(tp)
        return reset

    @staticmethod
    def partition_items(table: Any, partition: int) -> Iterator[tuple[str, Any]]:
        """Items of one partition's RocksDB store.

        Uses the store's per-partition DBs (Faust's RocksDB store keeps one DB
        per partition; its public ``items()`` spans all active partitions).
        """
        store = table.data
        db = store._db_for_partition(partition)
        for raw_key, raw_value in store._visible_items(db):
            yield store._decode_key(raw_key), store._decode_value(raw_value)
