"""Timers: N invocations sleeping at once in one worker; RSS, then firing lateness.

Each invocation (its own key) sleeps until a wall time ``at`` carried in its
payload, so the journaled wake time is exactly ``at``. The wake times are
spread evenly over a window that starts after all N should be asleep (an
estimate of the scheduling rate, checked and reported), at a firing rate the
engine can sustain. Lateness = the time the handler runs again - ``at``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bench.common import Health, Result, Run, alive, percentile, poll, read_ledger, rss_mb, totals
from tests import harness

TARGET_RSS = 300.0  # MB with 100,000 sleeping, issue 5
TARGET_P99 = 100.0  # ms


def sizes(smoke: bool) -> dict[str, float]:
    if smoke:
        return {"invocations": 2_000, "schedule_rate_estimate": 500.0, "wake_rate": 200.0, "margin_s": 2.0}
    return {"invocations": 100_000, "schedule_rate_estimate": 450.0, "wake_rate": 400.0, "margin_s": 10.0}


def memory(worker: harness.Worker) -> dict[str, Any]:
    """The worker's own memory figures (Bench/Mem): RocksDB memtables/caches and Python's heap."""
    try:
        body = worker.get("/Bench/mem/Mem")
    except (OSError, ValueError):
        return {}
    rocks = body.get("rocksdb") or {}
    return {"memtables_mb": rocks.get("cur-size-all-mem-tables", 0) / 2**20 if rocks else None,
            "block_cache_mb": rocks.get("block-cache-usage", 0) / 2**20 if rocks else None,
            "rocksdb_dbs": rocks.get("dbs"), "pymalloc_blocks": body.get("pymalloc_blocks")}


def describe(mem: dict[str, Any]) -> str:
    if not mem:
        return "unavailable"
    return (f"{mem['rocksdb_dbs']} RocksDB DBs, memtables {mem['memtables_mb']:.0f} MB, block cache "
            f"{mem['block_cache_mb']:.0f} MB; Python {mem['pymalloc_blocks']:,} pymalloc blocks")


def run(r: Run, result: Result) -> None:
    p = sizes(r.smoke)
    result.parameters = p
    n = int(p["invocations"])
    src = r.topic("timers", 1)
    factory = r.workers("timers", {src: "Bench/Timer"})
    worker = factory.new()
    pid = worker.proc.pid  # type: ignore[union-attr]
    health = [Health(worker)]
    time.sleep(2.0)
    rss_before = rss_mb(pid)

    start = time.time()
    first_at = start + n / p["schedule_rate_estimate"] + p["margin_s"]
    window = n / p["wake_rate"]
    harness.produce(src, [(f"t{i}", json.dumps({"i": i, "at": first_at + window * i / n})) for i in range(n)])
    peak = rss_before

    def all_asleep() -> bool:
        nonlocal peak
        peak = max(peak, rss_mb(pid))
        h = totals(health)
        return h["sleeping"] + h["completed"] >= n and h["pending"] == 0 and h["running"] == 0

    asleep_at = poll(all_asleep, timeout=first_at - start + 600, what=f"{n} invocations asleep",
                     interval=0.25, alive=alive(worker), detail=lambda: totals(health))
    h = totals(health)
    rss_sleeping = rss_mb(pid)
    mem_sleeping = memory(worker)
    if h["completed"]:
        result.notes.append(f"{h['completed']} timers fired before all {n} were asleep: the scheduling "
                            f"estimate ({p['schedule_rate_estimate']:.0f}/s) was too high")
    result.notes.append(f"all {n} asleep {asleep_at - start:.0f} s after the first produce "
                        f"({n / (asleep_at - start):.0f}/s); first wake-up at +{first_at - start:.0f} s, "
                        f"wake-ups spread over {window:.0f} s ({p['wake_rate']:.0f}/s)")

    end = poll(lambda: totals(health)["completed"] >= n, timeout=window + 600, what=f"{n} wake-ups",
               interval=0.25, alive=alive(worker), detail=lambda: totals(health))
    rss_after = rss_mb(pid)
    mem_after = memory(worker)
    h = totals(health)
    if h["failed"]:
        result.problems.append(f"{h['failed']} timer invocations failed")
    woke = {e["i"]: e for e in read_ledger(factory.base / "ledger.jsonl")}
    if len(woke) != n:
        result.problems.append(f"{n - len(woke)} of {n} timers never woke")
    late = [(e["woke"] - e["at"]) * 1000 for e in woke.values()]
    result.notes.append(f"last wake-up {end - (first_at + window):.1f} s after the last intended one")

    result.add("worker RSS before (idle)", rss_before, "MB")
    result.add(f"worker RSS with {n:,} asleep", rss_sleeping, "MB", target=TARGET_RSS if n >= 100_000 else None)
    result.add("worker peak RSS while scheduling", max(peak, rss_sleeping), "MB")
    result.add("worker RSS after all woke", rss_after, "MB")
    result.add(f"RocksDB memtables (allocated), {n:,} asleep", mem_sleeping.get("memtables_mb"), "MB")
    result.add("RocksDB memtables (allocated), all woke", mem_after.get("memtables_mb"), "MB")
    result.notes.append(f"memory with {n:,} asleep: {describe(mem_sleeping)}; after: {describe(mem_after)}")
    result.add("scheduling rate (ingest -> asleep)", n / (asleep_at - start), "inv/s", higher_is_better=True)
    result.add("wake-up lateness p50", percentile(late, 50), "ms")
    result.add("wake-up lateness p99", percentile(late, 99), "ms", target=TARGET_P99)
    result.add("wake-up lateness max", max(late) if late else None, "ms")
