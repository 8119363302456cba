"""Head-of-line: K keys on one source partition, 2 events per key, each sleeping 1 s durably.

A durable sleep parks only its own key, so all K keys sleep at once and the
whole batch should take about 2 s (two sleeps in a row per key). A plain
Faust agent handles one partition sequentially, so it needs 2K seconds: it
runs on a small sample and the total is extrapolated (said in the output).
"""

from __future__ import annotations

import json
import time

from bench.common import FaustBaseline, Health, Result, Run, alive, poll, totals
from tests import harness

SLEEP = 1.0
TARGETS = {200: 2.5, 1000: 3.0}  # seconds, from issue 5


def sizes(smoke: bool) -> dict[str, object]:
    return {"keys": [20] if smoke else [100, 200, 1000], "events_per_key": 2, "sleep_s": SLEEP,
            "baseline_sample": 3 if smoke else 10, "source_partitions": 1}


def run(r: Run, result: Result) -> None:
    p = sizes(r.smoke)
    result.parameters = p
    keys_list: list[int] = p["keys"]  # type: ignore[assignment]
    per_event = faust_per_event(r, int(p["baseline_sample"]))  # type: ignore[call-overload]
    result.notes.append(
        f"Faust baseline: measured on a {p['baseline_sample']}-event sample on one partition "
        f"({per_event:.3f} s/event) and extrapolated to 2K events"
    )
    src = r.topic("hol", 1)
    worker = r.workers("hol", {src: "Bench/Nap"}).new()
    health = [Health(worker)]
    for k in keys_list:
        seconds, failed = measure(worker, health, src, k)
        n = 2 * k
        if failed:
            result.problems.append(f"K={k}: {failed} invocations failed")
        result.notes.append(f"K={k}: {per_event * n / seconds:.0f}x faster than the plain Faust agent")
        result.add(f"K={k} keys x 2 x 1 s: time to complete all", seconds, "s",
                   baseline=per_event * n, baseline_name="plain Faust agent, extrapolated",
                   target=TARGETS.get(k))


def records(k: int) -> list[tuple[str, str]]:
    """2 events for each of K keys (all first events, then all second ones), each asking for one sleep."""
    return [(f"k{k}-{i}", json.dumps({"s": SLEEP})) for _ in range(2) for i in range(k)]


def measure(worker: harness.Worker, health: list[Health], src: str, k: int) -> tuple[float, int]:
    """Produce ``records(k)`` to a worker running Bench/Nap on ``src``: (seconds until all completed, failed)."""
    before = totals(health)
    batch = records(k)
    n = len(batch)
    start = time.time()
    harness.produce(src, batch)
    end = poll(lambda: totals(health)["completed"] - before["completed"] >= n,
               timeout=60 + 3 * n * 0.01, what=f"{n} invocations", interval=0.02, alive=alive(worker),
               detail=lambda: totals(health))
    return end - start, totals(health)["failed"] - before["failed"]


def faust_per_event(r: Run, sample: int) -> float:
    """Seconds per event of a plain Faust agent sleeping 1 s per record (sequential per partition)."""
    topic = r.topic("hol-faust", 1)
    baseline = FaustBaseline(r, topic, "sleep")
    try:
        baseline.wait_ready()
        start = time.time()
        harness.produce(topic, [(f"k{i}", json.dumps({"s": SLEEP})) for i in range(sample)])
        stats = baseline.wait_count(sample, timeout=30 + 3 * sample * SLEEP)
        return float(stats["last"] - start) / sample
    finally:
        baseline.stop()
