"""Handlers the benchmark runs (loaded with STREAMAPP_SERVICES=bench.services:services).

Each one is the smallest handler that exercises what its scenario measures:

    Nap     one durable sleep of ``s`` seconds               (head-of-line)
    Step    one ``ctx.run`` + one state write                (throughput, latency "trivial")
    Three   three ``ctx.run`` steps + one state write        (latency "3-step")
    Timer   sleep until the wall time ``at``, then note how late it woke   (timers)
    Gated   wait for the gate file, then one step + one write, noted once with the time  (recovery, failover)
    Mem     (read-only) memory of the worker: RocksDB memtables and Python heap (timers)

Notes go to the JSON-lines file named by ``BENCH_LEDGER``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import json
import os
import sys
import time
from typing import IO

from streamapp.durable import ObjectContext, Service, SharedContext

bench = Service("Bench")
services = [bench]

_ledger: IO[str] | None = None


def note(**fields: object) -> None:
    """Append one line to the ledger (one write call, so lines from concurrent tasks never mix)."""
    global _ledger
    if _ledger is None:
        _ledger = open(os.environ["BENCH_LEDGER"], "a", encoding="utf-8", buffering=1)
    _ledger.write(json.dumps({**fields, "pid": os.getpid()}) + "\n")


@dataclasses.dataclass
class NapRequest:
    s: float = 1.0


@dataclasses.dataclass
class StepRequest:
    i: int = 0
    t0: float = 0.0  # produce time (read by the latency probe from the invoke command)


@dataclasses.dataclass
class TimerRequest:
    i: int
    at: float  # wall time to wake at


@bench.handler()
async def Nap(ctx: ObjectContext, req: NapRequest) -> None:
    await ctx.sleep(req.s)


@bench.handler()
async def Step(ctx: ObjectContext, req: StepRequest) -> int:
    value = await ctx.run("step", lambda: req.i)
    ctx.set("last", value)
    return value


@bench.handler()
async def Three(ctx: ObjectContext, req: StepRequest) -> int:
    a = await ctx.run("one", lambda: req.i)
    b = await ctx.run("two", lambda: a + 1)
    c = await ctx.run("three", lambda: b + 1)
    ctx.set("last", c)
    return c


@bench.handler()
async def Timer(ctx: ObjectContext, req: TimerRequest) -> None:
    # The journaled wake time is now + (at - now), i.e. ``at``: lateness is measured against it.
    await ctx.sleep(max(0.0, req.at - time.time()))
    note(i=req.i, at=req.at, woke=time.time())


_gate: asyncio.Event | None = None
_watcher: asyncio.Task[None] | None = None  # kept referenced so it is not collected


def _gate_open(path: str) -> bool:
    return os.path.exists(path)


async def _watch_gate(path: str, event: asyncio.Event) -> None:
    while True:
        if _gate_open(path):
            event.set()
            return
        await asyncio.sleep(0.05)


async def wait_for_gate() -> bool:
    """Block until the file named by ``BENCH_GATE`` exists (one watcher task per process)."""
    global _gate, _watcher
    if _gate is None:
        _gate = asyncio.Event()
        _watcher = asyncio.get_running_loop().create_task(_watch_gate(os.environ["BENCH_GATE"], _gate))
    await _gate.wait()
    return True


@bench.handler()
async def Gated(ctx: ObjectContext, req: StepRequest) -> int:
    await ctx.run("gate", wait_for_gate)

    def work() -> int:
        note(i=req.i, t=time.time())
        return req.i

    value = await ctx.run("work", work)
    ctx.set("last", value)
    return value


@bench.handler(kind="shared")
async def Mem(ctx: SharedContext) -> dict[str, object]:
    """Where a worker's memory is (diagnostic): Python's heap, and RocksDB's memtables and caches."""
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    return {"pymalloc_blocks": sys.getallocatedblocks(), "gc_objects": sum(counts.values()),
            "top_types": counts.most_common(5), "rocksdb": rocksdb_memory()}


def rocksdb_memory() -> dict[str, int] | None:
    """RocksDB memory properties summed over every table's per-partition DB (None if unreachable)."""
    try:
        app = sys.modules["streamapp.runtime.main"].app
        dbs = [db for table in app.tables.values() for db in table.data._dbs.values()]  # Faust internals
        props = ("cur-size-all-mem-tables", "block-cache-usage", "estimate-table-readers-mem")
        out = {p: sum(db.property_int_value(f"rocksdb.{p}") or 0 for db in dbs) for p in props}
        return {"dbs": len(dbs), **out}
    except (KeyError, AttributeError, TypeError):
        return None
