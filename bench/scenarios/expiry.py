"""Expiry: outcomes dropped per second by the engine's apply path, on Faust's RocksDB tables.

In process, no worker and no broker: the engine (streamapp/runtime/engine.py)
runs over the real ``Tables`` (Faust tables on rocksdict, one DB per
partition, under the run's temp dir) with the actor pool and the scheduler
faked. Commands are applied the way the invocations agent applies them,
inside a (stand-in) stream event of the partition. Each table write goes
through Faust's own changelog path (serialization included) up to the
producer's buffer, which is replaced by a counter: the figures leave out
only the producer's batching and the Kafka round trip.

1. backlog: N outcomes finished (invoke + complete, 1 journal entry, ~300 B
   payload and result), then ``expire`` commands with ``before`` past all of
   them until none is left, at the runtime's cadence (one per EXPIRE_EVERY,
   so the worker's budget EXPIRE_RATE applies as in a worker): rows dropped
   per second of wall time, and per second spent applying the commands.
2. steady state: rounds of 240 finishes (2,400/s x 0.1 s, the command
   interval) each followed by one ``expire`` that drops them, so the deleted
   keys RocksDB has not compacted yet pile up in front of the live ones.
3. upgrade sweep: N outcomes with no index row (as a previous version wrote
   them), swept by ``expire`` commands until the index covers them all.

A worker expires at most EXPIRE_RATE outcomes a second (EXPIRE_MAX per
command); that and the measured rate must be far above 2x the throughput
target (2,400 outcomes/s).
"""

from __future__ import annotations

import time
import types
import weakref
from pathlib import Path
from typing import Any

import faust
from faust.streams import _current_event

from bench.common import BenchError, Result, Run, percentile
from streamapp.runtime import expiry as expiry_module
from streamapp.runtime.engine import Engine
from streamapp.runtime.ops import parse
from streamapp.runtime.store import Tables
from tests.unit.engine_fakes import FakeActors, FakeScheduler

TARGET = 2 * 1_200  # outcomes/s: twice the throughput target of issue 5
ROUND = int(TARGET * expiry_module.EXPIRE_EVERY)  # finishes per command interval at TARGET
TOPIC = "bench-expiry-invocations"


class _Event:
    """Stands in for the Faust event being processed (what the tables read the partition from)."""

    def __init__(self, partition: int) -> None:
        self.message = types.SimpleNamespace(partition=partition, topic=TOPIC)


COMMIT_EVERY = round(2.8 / expiry_module.EXPIRE_EVERY)  # expire commands per commit (Faust's commit interval)


class Rig:
    """The engine over Faust's RocksDB tables, fed one command at a time in a partition's event."""

    def __init__(self, datadir: Path) -> None:
        self.app = faust.App("bench-expiry", broker="kafka://127.0.0.1:1", store="rocksdb://",
                             datadir=str(datadir), web_enabled=False)
        self.tables = Tables(self.app, 1)
        self.changelog_records = 0
        self.changelog_bytes = 0
        for name in ("invocations", "results", "timers", "state", "meta"):
            getattr(self.tables, name)._verified_source_topics_for_partitions.add(TOPIC)
        self.engine = Engine(self.tables, FakeActors(), FakeScheduler())  # type: ignore[arg-type]
        self.offset = -1

    def commit(self) -> None:
        """What the worker's commit does first: take the staged table rows (net effects), encoded; count them."""
        for rows in self.tables.take_staged():
            for key, value, _headers in rows.records:
                self.changelog_records += 1
                self.changelog_bytes += len(key) + len(value or b"")

    def apply(self, cmd: dict[str, Any]) -> float:
        """Apply one command (as decoded from its record) to partition 0; seconds it took."""
        self.offset += 1
        command = parse(cmd)  # the agent decodes before it applies; not part of the figure
        event = _Event(0)
        token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
        began = time.perf_counter()
        try:
            self.engine.apply(0, self.offset, command)
        finally:
            _current_event.reset(token)
        return time.perf_counter() - began

    def finish(self, ids: range, prefix: str) -> None:
        for i in ids:
            inv_id = f"{prefix}{i:08d}-{'x' * 40}"
            self.apply({"op": "invoke", "id": inv_id, "service": "Bench", "handler": "h", "key": f"k{i}",
                        "payload": {"text": "p" * 300}, "not_before": None, "source": None})
            self.apply({"op": "entry", "id": inv_id, "epoch": "e1", "index": 0,
                        "entry": {"t": "run", "name": "step", "value": {"ok": True}}})
            self.apply({"op": "complete", "id": inv_id, "epoch": "e1", "attempt": 1,
                        "result": {"text": "r" * 300}, "state": {}})
        self.commit()

    def rows(self, table: Any) -> int:
        return sum(1 for _ in Tables.partition_keys(table, 0))

    def every_tick(self, before: float, done: Any) -> tuple[list[float], float]:
        """Expire commands at the runtime's cadence (one per EXPIRE_EVERY) until ``done()``.

        Returns each command's duration and the wall time from the first to the last.
        """
        took: list[float] = []
        began = time.perf_counter()
        while not done():
            if len(took) > 100_000:
                raise BenchError("expiry never finished")
            took.append(self.apply({"op": "expire", "before": before}))
            if len(took) % COMMIT_EVERY == 0:
                self.commit()
            time.sleep(max(0.0, began + len(took) * expiry_module.EXPIRE_EVERY - time.perf_counter()))
        self.commit()
        return took, time.perf_counter() - began


def sizes(smoke: bool) -> dict[str, Any]:
    return {"backlog": 5_000 if smoke else 200_000, "steady_rounds": 20 if smoke else 200,
            "sweep": 5_000 if smoke else 50_000, "expire_every_s": expiry_module.EXPIRE_EVERY,
            "expire_max": expiry_module.EXPIRE_MAX, "expire_rate": expiry_module.EXPIRE_RATE,
            "sweep_max": expiry_module.SWEEP_MAX, "partitions": 1}


def run(r: Run, result: Result) -> None:
    p = sizes(r.smoke)
    result.parameters = p
    rig = Rig(r.base / "expiry")
    rig.engine.expect_activation(0, "e1")
    rig.apply({"op": "activate", "epoch": "e1", "at": 0.0})
    backlog(rig, result, p["backlog"])
    steady(rig, result, p["steady_rounds"])
    sweep(rig, result, p["sweep"])


def backlog(rig: Rig, result: Result, n: int) -> None:
    """N outcomes past the retention at once: drained at the command cadence."""
    began = time.perf_counter()
    rig.finish(range(n), "b")
    filled = time.perf_counter() - began
    result.notes.append(f"backlog: {n:,} finished in {filled:.1f} s ({n / filled:,.0f}/s through invoke + "
                        "entry + complete, same process)")
    records = rig.changelog_records
    last: list[Any] = [None]

    def done() -> bool:  # the last command dropped nothing
        now = rig.engine.part(0).expired_to
        finished, last[0] = now == last[0] and now is not None, now
        return finished

    took, wall = rig.every_tick(time.time() + 1, done)
    left = rig.rows(rig.tables.results), rig.rows(rig.tables.expiry)
    if left != (0, 0):
        result.problems.append(f"backlog: {left[0]} outcomes and {left[1]} index rows left of {n}")
    result.add("backlog: drained at the command cadence", n / wall, "rows/s", target=TARGET,
               higher_is_better=True)
    result.add("backlog: outcomes expired per second of apply", n / sum(took), "rows/s", target=TARGET,
               higher_is_better=True)
    result.add("backlog: expire command p99", percentile(took, 99) * 1000, "ms")  # type: ignore[operator]
    result.add("backlog: longest expire command", max(took) * 1000, "ms")
    result.notes.append(f"backlog: {len(took)} commands in {wall:.1f} s, {rig.changelog_records - records:,} "
                        f"changelog records for {n:,} outcomes")


def steady(rig: Rig, result: Result, rounds: int) -> None:
    """Rounds of ROUND finishes, each followed by the expire command that drops them."""
    took = []
    began = time.perf_counter()
    for n in range(rounds):
        rig.finish(range(n * ROUND, (n + 1) * ROUND), "s")
        took.append(rig.apply({"op": "expire", "before": time.time() + 1}))
        # At the command cadence, as the worker sends them: back to back, a fast machine finished more
        # than EXPIRE_RATE a second and the rate limit (rightly) left outcomes for later commands.
        time.sleep(max(0.0, began + (n + 1) * expiry_module.EXPIRE_EVERY - time.perf_counter()))
    left = rig.rows(rig.tables.results), rig.rows(rig.tables.expiry)
    if left != (0, 0):
        result.problems.append(f"steady state: {left[0]} outcomes and {left[1]} index rows left")
    dropped = rounds * ROUND
    result.add("steady state: outcomes expired per second of apply", dropped / sum(took), "rows/s",
               target=TARGET, higher_is_better=True)
    result.add("steady state: expire command p99", percentile(took, 99) * 1000, "ms")  # type: ignore[operator]
    result.add("steady state: share of the loop at 2,400 finishes/s", 100 * TARGET * sum(took) / dropped, "%")


def sweep(rig: Rig, result: Result, n: int) -> None:
    """Outcomes without index rows (a worker upgraded in place, an index lost): indexed, a bounded step per command."""
    rig.finish(range(n), "u")
    rig.tables.expiry.drop(0)  # the index of partition 0 is gone; its results rows stay
    # none past the retention yet: every one gets indexed
    took, wall = rig.every_tick(0.0, lambda: rig.tables.index_swept(0) is True)
    indexed = rig.rows(rig.tables.expiry)
    if indexed != n:
        result.problems.append(f"sweep: {indexed} of {n} outcomes indexed")
    result.add("upgrade sweep: outcomes indexed at the command cadence", n / wall, "rows/s")
    result.add("upgrade sweep: longest expire command", max(took) * 1000, "ms")
