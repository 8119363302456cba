"""Throughput: N invocations over K keys, handler = one ``ctx.run`` + one state write.

Invocations/s from the first produce to the last completion (the /health
``completed`` counter), beside two baselines on the same broker in the same
run: a plain Faust agent that only counts the records (Faust's ceiling) and
a raw aiokafka consumer in the bench process (the transport's ceiling).
Worker RSS is sampled with psutil during the run (peak), and the worker's CPU
time per invocation is read from psutil before and after.

``measure`` is shared with the scale-out scenario.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import baseline_aiokafka, profile
from bench.common import FaustBaseline, Health, Result, RssSampler, Run, alive, poll, totals
from tests import harness

TARGET_RATE = 1200.0  # invocations/s, issue 5
TARGET_RSS = 200.0  # MB
TARGET_CPU_MS = 1.2  # worker CPU per invocation, issue 12


def sizes(smoke: bool) -> dict[str, int]:
    return {"invocations": 500 if smoke else 20_000, "keys": 50 if smoke else 1_000,
            "source_partitions": 8, "internal_partitions": 8}


def records(n: int, keys: int) -> list[tuple[bytes, bytes]]:
    return [(f"k{i % keys}".encode(), json.dumps({"i": i}).encode()) for i in range(n)]


@dataclasses.dataclass
class Measured:
    rate: float  # invocations/s, first produce to last completion
    rss_mb: float  # peak RSS of one worker
    problems: list[str]
    records: dict[str, int]  # records written per topic of the app (suffix after the app id)
    cpu_ms: float  # worker CPU time (user + system, all workers) per invocation, ms, first produce to last completion


def measure(r: Run, name: str, n: int, keys: int, workers: int, partitions: int,
            profile_to: Path | None = None, source_partitions: int = 8) -> Measured:
    """Run the workload on fresh workers (stopped at the end); ``partitions`` is the internal topic's count."""
    src = r.topic(name, source_partitions)
    factory = r.workers(name, {src: "Bench/Step"}, {"STREAMAPP_PARTITIONS": str(partitions)})
    started = [factory.new(start=False).start(wait=False) for _ in range(workers)]
    for w in started:
        w.wait_ready()
    health = [Health(w) for w in started]
    # Wait until the partitions are spread (every worker drives some) before timing.
    poll(lambda: all(len((h.get() or {}).get("live_partitions", [])) > 0 for h in health)
         and sum(len((h.get() or {}).get("live_partitions", [])) for h in health) == partitions,
         timeout=60, what="every partition to be live", interval=0.2, alive=alive(*started))
    spy = None
    if profile_to is not None:
        spy = profile.record(started[0].proc.pid, profile_to)  # type: ignore[union-attr]
    procs = [psutil.Process(w.proc.pid) for w in started]  # type: ignore[union-attr]
    with RssSampler([w.proc.pid for w in started]) as rss:  # type: ignore[union-attr]
        cpu_before = cpu_seconds(procs)
        start = time.time()
        harness.produce(src, records(n, keys))
        end = poll(lambda: totals(health)["completed"] >= n, timeout=60 + n / 50, what=f"{n} completions",
                   alive=alive(*started), detail=lambda: totals(health))
        cpu = cpu_seconds(procs) - cpu_before
    if spy is not None:
        spy.wait(timeout=60)
    final = totals(health)
    problems = []
    if final["failed"] or final["completed"] != n:
        problems.append(f"{name}: completed={final['completed']} failed={final['failed']} (expected {n})")
    for w in started:
        w.stop()
    written = harness.run_async(topic_records(factory.app_id))
    return Measured(n / (end - start), rss.peak_mb(), problems, written, cpu * 1000 / n)


def cpu_seconds(procs: list[psutil.Process]) -> float:
    """CPU time (user + system) the processes used so far: less sensitive to a busy machine than a rate."""
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def run(r: Run, result: Result) -> None:
    p = sizes(r.smoke)
    result.parameters = dict(p)  # a copy: records_per_invocation, a dict, is added to it below
    n, keys = p["invocations"], p["keys"]
    profile_to = r.base / "throughput.pyspy.txt" if r.profile else None
    m = measure(r, "tput", n, keys, 1, p["internal_partitions"], profile_to)
    rate = m.rate
    result.problems.extend(m.problems)
    r.memo["throughput_1_worker"] = rate
    per_inv = {topic: count / n for topic, count in sorted(m.records.items()) if count}
    result.parameters["records_per_invocation"] = per_inv
    result.notes.append("records per invocation: " + ", ".join(f"{t} {c:.2f}" for t, c in per_inv.items()))

    faust_rate = faust_count_rate(r, n, keys)
    topic = r.topic("tput-aiokafka", 8)
    first, last, got = harness.run_async(baseline_aiokafka.produce_and_consume(topic, records(n, keys)))
    if got < n:
        result.problems.append(f"aiokafka baseline received {got} of {n} records")
    raw_rate = n / (last - first)

    result.add("end-to-end invocations/s (1 worker)", rate, "inv/s", baseline=faust_rate,
               baseline_name="plain Faust agent counting", target=TARGET_RATE, higher_is_better=True)
    result.add("end-to-end invocations/s vs raw consumer", rate, "inv/s", baseline=raw_rate,
               baseline_name="raw aiokafka consumer", higher_is_better=True)
    result.add("worker CPU per invocation", m.cpu_ms, "ms", target=TARGET_CPU_MS)
    result.add("worker peak RSS during the run", m.rss_mb, "MB", target=TARGET_RSS)
    result.add("records written to Kafka per invocation", sum(per_inv.values()), "records")
    if profile_to is not None and profile_to.exists():
        result.notes.extend(profile.summary(profile_to, per_second=rate))


async def topic_records(app_id: str) -> dict[str, int]:
    """Records in each topic of the app (summed end offsets), keyed by the name after the app id."""
    consumer = AIOKafkaConsumer(**harness.kafka_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        topics = [t for t in await consumer.topics() if t.startswith(app_id + "-")]
        await consumer._client.force_metadata_update()  # topics() alone leaves partitions unknown
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        ends = await consumer.end_offsets(tps) if tps else {}
        out: dict[str, int] = {}
        for tp, end in ends.items():
            short = tp.topic[len(app_id) + 1:]
            out[short] = out.get(short, 0) + end
        return out
    finally:
        await consumer.stop()


def faust_count_rate(r: Run, n: int, keys: int) -> float:
    topic = r.topic("tput-faust", 8)
    baseline = FaustBaseline(r, topic, "count")
    try:
        baseline.wait_ready()
        start = time.time()
        harness.produce(topic, records(n, keys))
        stats = baseline.wait_count(n, timeout=60 + n / 100)
        return n / float(stats["last"] - start)
    finally:
        baseline.stop()
