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


class Tables:
    def __init__(self, app: faust.App, partitions: int) -> None:
        def table(name: str, help_: str) -> Any:
            schema: faust.Schema = faust.Schema(key_type=str, key_serializer="raw", value_serializer="json")
            return app.Table(name, partitions=partitions, schema=schema, help=help_)

        self.invocations = table("invocations", "unfinished invocations")
        self.results = table("results", "finished invocations")
        self.timers = table("timers", "scheduled timers")
        self.state = table("state", "per-key user state")
        self.meta = table("meta", "partition epochs")

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

    def get(self, table: Any, key: str) -> Any:
        return table.get(key)
