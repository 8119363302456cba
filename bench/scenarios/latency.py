"""Latency: produce -> completion p50/p95/p99 at fixed rates, trivial and 3-step handlers.

An open-loop producer sends at a fixed rate (each record carries its send
time ``t0``; keys rotate over many keys so nothing queues behind a key). A
probe in the bench process reads the worker's internal topic: the ``invoke``
command of an invocation carries the payload (so its ``t0``), and the time
the probe receives its ``complete`` command is when the completion became
durable and visible on the log, the same moment the worker's own agent sees
it. Latency = receipt of ``complete`` - ``t0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.common import BenchError, Result, Run, percentile
from streamapp.runtime import commands
from tests import harness

HANDLERS = {"trivial": "Bench/Step", "3-step": "Bench/Three"}
TARGETS = {50: (20.0, 100.0), 200: (30.0, 150.0)}  # rate -> (p50, p99) in ms, issue 5
KEYS = 1000


def sizes(smoke: bool) -> dict[str, object]:
    return {"rates": [50, 200], "seconds": 3 if smoke else 30, "warmup_seconds": 1, "keys": KEYS,
            "handlers": HANDLERS}


async def measure(app_id: str, topic: str, partitions: int, rate: float, seconds: float
                  ) -> tuple[list[float], int, float, dict[str, float]]:
    """Send ``rate * seconds`` records; return (latencies in s, records sent, achieved send rate, ``gaps``)."""
    consumer = AIOKafkaConsumer(**harness.kafka_options(), enable_auto_commit=False)
    producer = AIOKafkaProducer(**harness.kafka_options(), acks="all")
    await consumer.start()
    await producer.start()
    sent: dict[str, float] = {}  # invocation id -> t0
    done: dict[str, float] = {}  # invocation id -> receipt of its complete command
    # invocation id -> the producer's timestamps (ms) of its commands: invoke, entries..., complete
    stamps: dict[str, list[tuple[str, int]]] = {}
    stop = asyncio.Event()
    all_done = asyncio.Event()
    n = int(rate * seconds)

    async def probe() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=50)
            now = time.time()
            for msgs in batch.values():
                for m in msgs:
                    for cmd in commands.unpack(json.loads(m.value)):  # a record can hold a batch
                        stamps.setdefault(cmd.get("id", ""), []).append((cmd["op"], m.timestamp))
                        if cmd["op"] == "invoke" and "t0" in (cmd.get("payload") or {}):
                            sent[cmd["id"]] = cmd["payload"]["t0"]
                        elif cmd["op"] == "complete" and cmd["id"] in sent:
                            done[cmd["id"]] = now
            if len(done) >= n:
                all_done.set()

    try:
        tps = [TopicPartition(f"{app_id}-invocations", p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        probing = asyncio.ensure_future(probe())
        loop = asyncio.get_running_loop()
        begin = loop.time()
        futures = []
        first = last = time.time()
        for i in range(n):
            delay = begin + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            last = t0 = time.time()
            value = json.dumps({"i": i, "t0": t0}).encode()
            futures.append(await producer.send(topic, key=f"k{i % KEYS}".encode(), value=value))
            if i == 0:
                first = last
        await asyncio.gather(*futures)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_done.wait(), timeout=30 + seconds)
        stop.set()
        await probing
        latencies = [done[k] - t0 for k, t0 in sent.items() if k in done]
        return latencies, n, (n - 1) / (last - first) if last > first else 0.0, gaps(sent, done, stamps)
    finally:
        await producer.stop()
        await consumer.stop()


def gaps(sent: dict[str, float], done: dict[str, float], stamps: dict[str, list[tuple[str, int]]]
         ) -> dict[str, float]:
    """Where the latency goes: the median of each gap between an invocation's commands, in ms.

    A command's time is its producer timestamp (the worker's clock, as is ``t0``'s
    producer's: one machine), so ``t0 -> invoke`` is the source's delivery to the
    worker, each ``-> entry`` or ``-> complete`` one step's round trip through the
    log (its previous command made durable and read back, then the actor's
    next step), and ``complete -> seen`` the probe's own fetch.
    """
    steps: dict[str, list[float]] = {}
    for k, t0 in sent.items():
        if k not in done:
            continue
        prev, prev_t = "t0", t0 * 1000
        for op, ts in stamps.get(k, []):
            steps.setdefault(f"{prev} -> {op}", []).append(ts - prev_t)
            prev, prev_t = op, ts
        steps.setdefault("complete -> seen", []).append(done[k] * 1000 - prev_t)
    # Every list has an entry, so no median is None.
    return {name: median for name, v in steps.items() if (median := percentile(v, 50)) is not None}


def run(r: Run, result: Result) -> None:
    p = sizes(r.smoke)
    result.parameters = p
    rates: list[int] = p["rates"]  # type: ignore[assignment]
    seconds = float(p["seconds"])  # type: ignore[arg-type]
    topics = {name: r.topic(f"lat-{name}", 1) for name in HANDLERS}
    factory = r.workers("lat", {topics[name]: target for name, target in HANDLERS.items()})
    worker = factory.new()
    partitions = 8
    for name in HANDLERS:
        # Warm-up, not counted: the first invocations pay for connections and caches.
        harness.run_async(measure(factory.app_id, topics[name], partitions, 50, float(p["warmup_seconds"])))  # type: ignore[arg-type]
        for rate in rates:
            if worker.proc is not None and worker.proc.poll() is not None:
                raise BenchError(f"worker exited:\n{worker.tail()}")
            lat, n, achieved, where = harness.run_async(
                measure(factory.app_id, topics[name], partitions, rate, seconds))
            if len(lat) < n:
                result.problems.append(f"{name} at {rate}/s: {n - len(lat)} of {n} invocations not completed")
            ms = [x * 1000 for x in lat]
            p50, p99 = TARGETS.get(rate, (None, None))
            label = f"{name} handler at {rate}/s (sent {achieved:.0f}/s, n={n})"
            result.add(f"{label}: p50", percentile(ms, 50), "ms", target=p50)
            result.add(f"{label}: p95", percentile(ms, 95), "ms")
            result.add(f"{label}: p99", percentile(ms, 99), "ms", target=p99)
            result.notes.append(f"{name} at {rate}/s, median gaps: "
                                + ", ".join(f"{step} {ms_:.1f} ms" for step, ms_ in where.items()))
    result.notes.append("latency = produce -> the complete command received by a probe consumer on the "
                        "internal topic (durable completion)")
