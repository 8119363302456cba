"""Latency: produce -> completion p50/p95/p99 at fixed rates, trivial and 3-step handlers.

An open-loop producer sends at a fixed rate (each record carries its send
time ``t0``; keys rotate over many keys so nothing queues behind a key). A
probe in the bench process reads the worker's internal topic and its
``results`` changelog. Two ends are measured for each invocation:

- ``finished``: the worker's own record of the completion, its clock when it
  applied the durable ``complete`` command (the ``streamapp.finished`` header
  of the outcome's changelog record). This is what Restate's
  ``completed_at`` is (its server's clock when it applied the completion
  from its log), so the anchor compares this one with Restate's.
- ``seen``: the probe receiving the ``complete`` command from the internal
  topic, the moment any consumer of the log can see it. Not earlier than
  ``finished`` by design: the worker applies its own command at the
  producer's acknowledgement, which on a busy worker can reach it after a
  separate consumer has fetched the record (on 2026-12-03, 0.3 ms later at
  the median).

The ``invoke`` command of an invocation carries the payload (so its ``t0``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.common import BenchError, Result, Run, percentile
from streamapp.runtime import commands
from streamapp.runtime.store import FINISHED
from tests import harness

HANDLERS = {"trivial": "Bench/Step", "3-step": "Bench/Three"}
TARGETS = {50: (20.0, 100.0), 200: (30.0, 150.0)}  # rate -> (p50, p99) in ms, issue 5
KEYS = 1000


def sizes(smoke: bool) -> dict[str, object]:
    return {"rates": [50, 200], "seconds": 3 if smoke else 30, "warmup_seconds": 1, "keys": KEYS,
            "handlers": HANDLERS}


@dataclass
class Measured:
    seen: list[float]  # t0 -> the probe received the complete command, seconds, one per completed invocation
    finished: list[float]  # t0 -> the worker's finish time of the invocation (the outcome's header)
    sent: int  # records sent
    rate: float  # achieved send rate
    gaps: dict[str, float]  # median gap between an invocation's commands (``gaps``)


async def measure(app_id: str, topic: str, partitions: int, rate: float, seconds: float) -> Measured:
    """Send ``rate * seconds`` records and wait until each one's completion was seen and its finish time read."""
    consumer = AIOKafkaConsumer(**harness.kafka_options(), enable_auto_commit=False)
    producer = AIOKafkaProducer(**harness.kafka_options(), acks="all")
    await consumer.start()
    await producer.start()
    internal, results = f"{app_id}-invocations", f"{app_id}-results-changelog"
    sent: dict[str, float] = {}  # invocation id -> t0
    done: dict[str, float] = {}  # invocation id -> receipt of its complete command
    finished: dict[str, float] = {}  # invocation id -> its finish time on the worker's clock
    # invocation id -> the producer's timestamps (ms) of its commands: invoke, entries..., complete
    stamps: dict[str, list[tuple[str, int]]] = {}
    stop = asyncio.Event()
    all_done = asyncio.Event()
    n = int(rate * seconds)

    def on_command(m: object, now: float) -> None:
        for cmd in commands.unpack(json.loads(m.value)):  # type: ignore[attr-defined]  # a record can hold a batch
            stamps.setdefault(cmd.get("id", ""), []).append((cmd["op"], m.timestamp))  # type: ignore[attr-defined]
            if cmd["op"] == "invoke" and "t0" in (cmd.get("payload") or {}):
                sent[cmd["id"]] = cmd["payload"]["t0"]
            elif cmd["op"] == "complete" and cmd["id"] in sent:
                done[cmd["id"]] = now

    def on_outcome(m: object) -> None:
        header = dict(m.headers or ()).get(FINISHED)  # type: ignore[attr-defined]
        if header is not None and m.key is not None:  # type: ignore[attr-defined]
            finished[json.loads(m.key)] = float(header)  # type: ignore[attr-defined]  # the key as Faust encodes it

    async def probe() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=50)
            now = time.time()
            for tp, msgs in batch.items():
                for m in msgs:
                    if tp.topic == internal:
                        on_command(m, now)
                    else:
                        on_outcome(m)
            if len(done) >= n and all(k in finished for k in done):
                all_done.set()

    try:
        tps = [TopicPartition(t, p) for t in (internal, results) for p in range(partitions)]
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
        return Measured(seen=[done[k] - t0 for k, t0 in sent.items() if k in done],
                        finished=[finished[k] - t0 for k, t0 in sent.items() if k in done and k in finished],
                        sent=n, rate=(n - 1) / (last - first) if last > first else 0.0,
                        gaps=gaps(sent, done, stamps))
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
            m = harness.run_async(measure(factory.app_id, topics[name], partitions, rate, seconds))
            if len(m.seen) < m.sent:
                result.problems.append(f"{name} at {rate}/s: {m.sent - len(m.seen)} of {m.sent} invocations "
                                       "not completed")
            if len(m.finished) < len(m.seen):
                result.problems.append(f"{name} at {rate}/s: no finish time read for "
                                       f"{len(m.seen) - len(m.finished)} completed invocations")
            ms = [x * 1000 for x in m.seen]
            p50, p99 = TARGETS.get(rate, (None, None))
            label = f"{name} handler at {rate}/s (sent {m.rate:.0f}/s, n={m.sent})"
            result.add(f"{label}: p50", percentile(ms, 50), "ms", target=p50)
            result.add(f"{label}: p95", percentile(ms, 95), "ms")
            result.add(f"{label}: p99", percentile(ms, 99), "ms", target=p99)
            fin = [x * 1000 for x in m.finished]
            result.add(f"{label}, to the worker's finish time: p50", percentile(fin, 50), "ms")
            result.add(f"{label}, to the worker's finish time: p99", percentile(fin, 99), "ms")
            result.notes.append(f"{name} at {rate}/s, median gaps: "
                                + ", ".join(f"{step} {ms_:.1f} ms" for step, ms_ in m.gaps.items()))
    result.notes.append("latency = produce -> the complete command received by a probe consumer on the "
                        "internal topic (durable completion, seen on the log); 'to the worker's finish time' = "
                        "produce -> the finish time the worker recorded when it applied the durable completion "
                        "(as Restate's completed_at)")
