"""Broker-free stand-ins for what the engine touches: tables, actor pool, scheduler.

``FakeTables`` keeps each row with the partition it was written in, the way
Faust's per-partition RocksDB stores do when the invocations agent writes
inside its stream iteration; ``EngineRig.apply`` plays that agent, one
command at a time, with increasing offsets per partition.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from streamapp.runtime import changelog, limits, ops
from streamapp.runtime.engine import Engine


class FakeTable:
    def __init__(self, rig: FakeTables) -> None:
        self.rig = rig
        self.rows: dict[str, tuple[int, Any]] = {}
        self.writes = 0
        self.scans = 0  # iterations begun
        self.visited = 0  # rows handed out by iterations (what a store would read)

    def get(self, key: str, default: Any = None) -> Any:
        row = self.rows.get(key)
        return row[1] if row is not None else default

    def __setitem__(self, key: str, value: Any) -> None:
        assert self.rig.current is not None, "table written outside the agent's iteration"
        self.rows[key] = (self.rig.current, value)
        self.writes += 1

    def put(self, key: str, value: Any, raw: bytes | None = None) -> None:
        # The encoding a caller hands over must be the row's own (a stale one would reach the changelog).
        assert raw is None or raw == limits.row_bytes(value), "put with an encoding of another value"
        self[key] = value

    def __delitem__(self, key: str) -> None:
        assert self.rig.current is not None, "table written outside the agent's iteration"
        del self.rows[key]
        self.writes += 1

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def items_of(self, partition: int, start: str | None = None) -> Iterator[tuple[str, Any]]:
        """Like a RocksDB iterator: key order, seeking to ``start`` (inclusive), over a snapshot."""
        self.scans += 1
        for key, (p, value) in sorted(self.rows.items()):
            if p == partition and (start is None or key >= start):
                self.visited += 1
                yield key, value


class FakeTables:
    def __init__(self) -> None:
        self.current: int | None = None
        self.positions = changelog.Positions()
        self.invocations = FakeTable(self)
        self.results = FakeTable(self)
        self.expiry = FakeTable(self)
        self.timers = FakeTable(self)
        self.state = FakeTable(self)
        self.meta = FakeTable(self)
        self.swept: dict[int, str | bool] = {}  # the expiry index's sweep cursors (local to a worker, no table)

    @staticmethod
    def partition_items(table: Any, partition: int, start: str | None = None) -> Iterator[tuple[str, Any]]:
        return table.items_of(partition, start)  # type: ignore[no-any-return]

    @staticmethod
    def partition_keys(table: Any, partition: int, start: str | None = None) -> Iterator[str]:
        return (key for key, _ in table.items_of(partition, start))

    def index_swept(self, partition: int) -> str | bool | None:
        return self.swept.get(partition)

    def set_index_swept(self, partition: int, cursor: str | bool) -> None:
        self.swept[partition] = cursor


class FakeActors:
    """Records what the engine asks of the actor pool."""

    def __init__(self) -> None:
        self.started: list[tuple[int, str, str]] = []  # (partition, epoch, invocation id)
        self.running: dict[str, str] = {}  # invocation id -> epoch
        self.cancelled: list[str] = []

    def start(self, p: int, epoch: str | None, rec: dict[str, Any], state: dict[str, Any]) -> None:
        assert epoch is not None
        self.started.append((p, epoch, rec["id"]))
        self.running[rec["id"]] = epoch

    def cancel(self, inv_id: str) -> None:
        self.cancelled.append(inv_id)
        self.running.pop(inv_id, None)

    def cancel_partitions(self, partitions: set[int]) -> None:
        for inv_id, _epoch in list(self.running.items()):
            self.running.pop(inv_id, None)

    def waiting(self) -> int:
        return 0

    def finished(self, inv_id: str) -> None:
        """The actor of ``inv_id`` ended (its outcome command is on its way)."""
        self.running.pop(inv_id, None)


class FakeScheduler:
    def __init__(self) -> None:
        self.timers: dict[str, tuple[int, str, float]] = {}

    def add(self, p: int, epoch: str | None, inv_id: str, wake_at: float, *rest: Any) -> None:
        assert epoch is not None
        self.timers[inv_id] = (p, epoch, wake_at)

    def drop_partitions(self, partitions: set[int]) -> None:
        self.timers = {i: t for i, t in self.timers.items() if t[0] not in partitions}

    def count(self, p: int) -> int:
        return sum(1 for t in self.timers.values() if t[0] == p)


class EngineRig:
    """An engine over fake tables, fed commands the way the invocations agent feeds it."""

    def __init__(self) -> None:
        self.tables = FakeTables()
        self.actors = FakeActors()
        self.scheduler = FakeScheduler()
        self.engine = Engine(self.tables, self.actors, self.scheduler)  # type: ignore[arg-type]
        self.offsets: dict[int, int] = {}

    def apply(self, p: int, cmd: dict[str, Any], offset: int | None = None) -> int:
        if offset is None:
            offset = self.offsets.get(p, -1) + 1
        self.offsets[p] = max(offset, self.offsets.get(p, -1))
        self.tables.current = p
        try:
            self.engine.apply(p, offset, ops.parse(cmd))
        finally:
            self.tables.current = None
        return offset

    def activate(self, p: int, epoch: str = "e1") -> str:
        self.engine.expect_activation(p, epoch)
        self.apply(p, {"op": "activate", "epoch": epoch, "at": 0.0})
        return epoch

    def status(self, inv_id: str) -> str | None:
        rec = self.tables.invocations.get(inv_id) or self.tables.results.get(inv_id)
        return None if rec is None else str(rec["status"])
