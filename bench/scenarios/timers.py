"""Timers: N invocations sleeping at once in one worker; RSS, then firing lateness, also beside a burst.

Each invocation (its own key) sleeps until a wall time ``at`` carried in its
payload, so the journaled wake time is exactly ``at``. The wake times are
spread evenly over a window that starts after all N should be asleep (an
estimate of the scheduling rate, checked and reported), at a firing rate the
engine can sustain. Lateness = the time the handler runs again - ``at``.

A quarter into the window, the throughput scenario's workload (a burst of
``Bench/Step`` invocations over 1,000 keys, on a source topic of its own)
goes to the same worker: the lateness of the timers due while it runs is a
figure of its own (issue 12: "while the throughput workload runs"), beside
the burst's rate.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from typing import Any

from bench.common import Health, Result, Run, alive, percentile, poll, read_ledger, rss_mb, totals
from tests import harness

TARGET_RSS = 300.0  # MB with 100,000 sleeping, issue 5
TARGET_P99 = 100.0  # ms


def sizes(smoke: bool) -> dict[str, float]:
    if smoke:
        return {"invocations": 2_000, "schedule_rate_estimate": 500.0, "wake_rate": 200.0, "margin_s": 2.0,
                "burst": 300, "burst_keys": 50, "burst_at": 0.25}
    return {"invocations": 100_000, "schedule_rate_estimate": 450.0, "wake_rate": 400.0, "margin_s": 10.0,
            "burst": 20_000, "burst_keys": 1_000, "burst_at": 0.25}


_STEPS_DONE = re.compile(  # labels in either order
    r'^streamapp_invocations_completed_total\{(?=[^}]*handler="Step")(?=[^}]*service="Bench")[^}]*\} (\S+)$', re.M)


def steps_completed(worker: harness.Worker) -> int:
    """``Bench/Step`` invocations the worker completed (its /metrics counter)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=10) as resp:
            match = _STEPS_DONE.search(resp.read().decode())
    except OSError:
        return 0
    return int(float(match.group(1))) if match else 0


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
    burst_src = r.topic("timers-burst", 8)
    factory = r.workers("timers", {src: "Bench/Timer", burst_src: "Bench/Step"})
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

    # The throughput workload, while the timers fire.
    burst = int(p["burst"])
    time.sleep(max(0.0, first_at + window * p["burst_at"] - time.time()))
    burst_start = time.time()
    harness.produce(burst_src, [(f"k{i % int(p['burst_keys'])}", json.dumps({"i": i})) for i in range(burst)])
    burst_end = poll(lambda: steps_completed(worker) >= burst, timeout=600, what=f"{burst} burst invocations",
                     interval=0.1, alive=alive(worker), detail=lambda: totals(health))

    end = poll(lambda: totals(health)["completed"] >= n + burst, timeout=window + 600, what=f"{n} wake-ups",
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
    late_in_burst = [(e["woke"] - e["at"]) * 1000 for e in woke.values() if burst_start <= e["at"] <= burst_end]
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
    result.add(f"wake-up lateness p99 while a burst of {burst:,} ran", percentile(late_in_burst, 99), "ms",
               target=TARGET_P99)
    result.add("the burst beside the timers: invocations/s", burst / (burst_end - burst_start), "inv/s",
               higher_is_better=True)
    result.notes.append(f"burst of {burst:,} Bench/Step over {int(p['burst_keys']):,} keys from "
                        f"+{burst_start - first_at:.0f} s into the wake-ups, {burst_end - burst_start:.1f} s; "
                        f"{len(late_in_burst):,} timers were due meanwhile")
