"""The anchor's parts: each workload on streamapp (the bench's own scenario code) and then on Restate, same sizes.

Every part runs streamapp first, stops it, then starts a fresh Restate
(server + SDK process), so the two never compete for the 2 cores. Each figure
is a ``Figure`` with streamapp's value and Restate's as its ``baseline``.

    throughput  bursts of N invocations over K keys, ``Bench/Step`` (one ``ctx.run`` + one state write):
                streamapp: first produce -> /health ``completed`` covers N (``throughput.measure``)
                Restate:   first produce -> the latest ``completed_at`` in ``sys_invocation`` once N completed
                peak RSS during the burst: the worker vs restate-server + the SDK process (summed)
    latency     open loop at 50/s and 200/s, ``Bench/Step``, 1,000 keys on a 1-partition source:
                streamapp: produce -> the invocation's finish time, the worker's clock when it applied the
                           durable ``complete`` command (``latency.measure``; also reported: a probe
                           receiving that command from the log, which can come first; no Restate counterpart)
                Restate:   produce (``t0`` in the record) -> the invocation's ``completed_at``, its
                           server's clock when it applied the completion from its log
    hol         K keys x 2 events x ``ctx.sleep(1 s)`` on one source partition (``Bench/Nap``):
                first produce -> all 2K completed (streamapp: /health; Restate: latest ``completed_at``)
    idle        a subscription on an empty topic, nothing to do: CPU % of one core over the window, RSS
                streamapp: one worker; Restate: restate-server + the SDK process
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer

from bench.anchor import usage
from bench.anchor.install import RESTATE_VERSION, Installed
from bench.anchor.restate import LedgerTail, Restate
from bench.common import BenchError, Health, Result, Run, percentile, read_ledger
from bench.scenarios import hol, latency, throughput
from tests import harness

T = TypeVar("T")
RESTATE = f"Restate {RESTATE_VERSION}"
Part = Callable[[Run, Installed, Result], None]


def sizes(smoke: bool) -> dict[str, Any]:
    return {
        # (invocations, keys, source partitions); the streamapp worker has 8 internal partitions
        "throughput": {"bursts": [(300, 50, 1), (500, 50, 8)] if smoke else [(5_000, 1_000, 1), (20_000, 1_000, 8)],
                       "internal_partitions": 8},
        "latency": {"rates": [50, 200], "seconds": 3 if smoke else 30, "warmup_seconds": 1,
                    "keys": latency.KEYS, "source_partitions": 1, "handler": "Bench/Step"},
        "hol": {"keys": [20] if smoke else [200, 1_000], "events_per_key": 2, "sleep_s": hol.SLEEP,
                "source_partitions": 1, "handler": "Bench/Nap"},
        "idle": {"seconds": 5 if smoke else 20, "settle_seconds": 2 if smoke else 5},
    }


def attempt(result: Result, side: str, fn: Callable[[], T]) -> T | None:
    """Run one side of a part; a failure is recorded (the other side's figures are still shown)."""
    try:
        return fn()
    except BenchError as exc:
        result.problems.append(f"{side}: {exc}")
    except Exception:  # a broken side must not stop the other (or leave processes)
        result.problems.append(f"{side}: {traceback.format_exc()}")
    return None


def pick(values: Any, i: int) -> float | None:
    return None if values is None else float(values[i])


async def produce_to_each_partition(topic: str, partitions: int, value: dict[str, Any]) -> None:
    """One record on every partition (a warm-up proving each is consumed)."""
    producer = AIOKafkaProducer(**harness.kafka_options(), acks="all")
    await producer.start()
    try:
        for p in range(partitions):
            await producer.send_and_wait(topic, json.dumps(value).encode(), key=f"warm-{p}".encode(), partition=p)
    finally:
        await producer.stop()


def restate_ready(r: Run, inst: Installed, name: str, topic: str, handler: str, partitions: int,
                  warm: dict[str, Any]) -> tuple[Restate, str, LedgerTail]:
    """A started Restate subscribed to ``topic``, with one warm-up invocation per partition completed."""
    rs = Restate(r, inst, name).start()
    sub = rs.subscribe(topic, handler)
    tail = LedgerTail(rs.ledger)
    harness.run_async(produce_to_each_partition(topic, partitions, warm))
    rs.wait_completed(sub, partitions, timeout=120, tail=tail)
    return rs, sub, tail


# -- throughput (and memory) ---------------------------------------------------------
def part_throughput(r: Run, inst: Installed, result: Result) -> None:
    p = sizes(r.smoke)["throughput"]
    result.parameters = p
    for n, keys, sp in p["bursts"]:
        label = f"burst of {n:,} over {keys:,} keys, {sp} source partition{'s' if sp > 1 else ''}"

        def streamapp(n: int = n, keys: int = keys, sp: int = sp) -> tuple[float, float]:
            m = throughput.measure(r, "anchor-tput", n, keys, 1, p["internal_partitions"], source_partitions=sp)
            if m.problems:
                raise BenchError("; ".join(m.problems))
            return m.rate, m.rss_mb

        def restate(n: int = n, keys: int = keys, sp: int = sp) -> tuple[float, float]:
            topic = r.topic("anchor-tput-restate", sp)
            rs, sub, tail = restate_ready(r, inst, "tput", topic, "Step", sp, {"i": -1})
            try:
                with usage.PeakRss(rs.pids) as rss:
                    start = time.time()
                    harness.produce(topic, throughput.records(n, keys))
                    end = rs.wait_completed(sub, n + sp, timeout=60 + n / 50, tail=tail)
                return n / (end - start), rss.peak
            finally:
                rs.stop()

        s = attempt(result, f"streamapp, {label}", streamapp)
        rr = attempt(result, f"Restate, {label}", restate)
        result.add(f"{label}: invocations/s", pick(s, 0), "inv/s", baseline=pick(rr, 0), baseline_name=RESTATE,
                   higher_is_better=True)
        result.add(f"{label}: peak RSS", pick(s, 1), "MB", baseline=pick(rr, 1), baseline_name=RESTATE)
    result.notes.append("throughput: first produce -> all completed (streamapp: /health `completed`, polled every "
                        "50 ms; Restate: the latest `completed_at` in sys_invocation); Restate warmed up with one "
                        "invocation per source partition first, streamapp waited for every partition live")
    result.notes.append("peak RSS: streamapp's worker vs restate-server + the SDK process summed, sampled every 0.2 s")


# -- latency -----------------------------------------------------------------------------
async def send_paced(topic: str, rate: float, seconds: float, first_i: int) -> tuple[dict[int, float], float]:
    """The latency scenario's open-loop producer (same pacing and keys): ({i: t0}, achieved send rate)."""
    producer = AIOKafkaProducer(**harness.kafka_options(), acks="all")
    await producer.start()
    sent: dict[int, float] = {}
    n = int(rate * seconds)
    try:
        loop = asyncio.get_running_loop()
        begin = loop.time()
        futures = []
        for j in range(n):
            delay = begin + j / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            i = first_i + j
            t0 = sent[i] = time.time()
            futures.append(await producer.send(topic, key=f"k{i % latency.KEYS}".encode(),
                                               value=json.dumps({"i": i, "t0": t0}).encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    times = sorted(sent.values())
    return sent, (n - 1) / (times[-1] - times[0]) if n > 1 and times[-1] > times[0] else 0.0


def part_latency(r: Run, inst: Installed, result: Result) -> None:
    p = sizes(r.smoke)["latency"]
    result.parameters = p
    rates: list[int] = p["rates"]
    seconds, warmup = float(p["seconds"]), float(p["warmup_seconds"])

    seen: dict[int, list[float]] = {}  # streamapp: produce -> the complete command seen on the log

    def streamapp() -> dict[int, list[float]]:
        topic = r.topic("anchor-lat", 1)
        factory = r.workers("anchor-lat", {topic: "Bench/Step"})
        worker = factory.new()
        try:
            harness.run_async(latency.measure(factory.app_id, topic, 8, 50, warmup))  # warm-up, not counted
            out = {}
            for rate in rates:
                m = harness.run_async(latency.measure(factory.app_id, topic, 8, rate, seconds))
                if len(m.finished) < m.sent:
                    raise BenchError(f"at {rate}/s: {m.sent - len(m.finished)} of {m.sent} invocations "
                                     "not completed (or their finish time not read)")
                out[rate] = [x * 1000 for x in m.finished]
                seen[rate] = [x * 1000 for x in m.seen]
            return out
        finally:
            worker.stop()

    def restate() -> dict[int, list[float]]:
        topic = r.topic("anchor-lat-restate", 1)
        rs, sub, tail = restate_ready(r, inst, "lat", topic, "Step", 1, {"i": -1})
        try:
            done = 1
            first_i = 0
            out = {}
            for counted, rate, secs in [(False, 50, warmup), *((True, rate, seconds) for rate in rates)]:
                sent, _ = harness.run_async(send_paced(topic, rate, secs, first_i))
                first_i += len(sent)
                done += len(sent)
                rs.wait_completed(sub, done, timeout=30 + secs, tail=tail)
                if not counted:
                    continue  # the warm-up
                ids = {int(line["i"]): str(line["id"]) for line in read_ledger(rs.ledger)}
                completed = rs.completed_at(sub)
                out[rate] = [1000 * (completed[ids[i]] - t0) for i, t0 in sent.items()]
            return out
        finally:
            rs.stop()

    s = attempt(result, "streamapp", streamapp)
    rr = attempt(result, "Restate", restate)
    for rate in rates:
        for q in (50, 99):
            result.add(f"Bench/Step at {rate}/s for {seconds:.0f} s: p{q}", percentile(s[rate], q) if s else None,
                       "ms", baseline=percentile(rr[rate], q) if rr else None, baseline_name=RESTATE)
        for q in (50, 99):
            result.add(f"Bench/Step at {rate}/s, streamapp's complete seen on the log: p{q}",
                       percentile(seen[rate], q) if rate in seen else None, "ms")
    result.notes.append("latency: streamapp = produce -> the invocation's finish time (the worker's clock when it "
                        "applied the durable complete command; the streamapp.finished header of its outcome "
                        "record); Restate = produce -> completed_at in sys_invocation (its server's clock when it "
                        "applied the completion, ms resolution); both after a 1 s warm-up at 50/s. The 'seen on "
                        "the log' rows: produce -> a separate consumer received the complete command (no Restate "
                        "counterpart; it can come before the worker's own apply at the producer's ack)")


# -- head-of-line --------------------------------------------------------------------------
def part_hol(r: Run, inst: Installed, result: Result) -> None:
    p = sizes(r.smoke)["hol"]
    result.parameters = p
    keys_list: list[int] = p["keys"]

    def streamapp() -> dict[int, float]:
        src = r.topic("anchor-hol", 1)
        worker = r.workers("anchor-hol", {src: "Bench/Nap"}).new()
        try:
            out = {}
            for k in keys_list:
                secs, failed = hol.measure(worker, [Health(worker)], src, k)
                if failed:
                    raise BenchError(f"K={k}: {failed} invocations failed")
                out[k] = secs
            return out
        finally:
            worker.stop()

    def restate() -> dict[int, float]:
        topic = r.topic("anchor-hol-restate", 1)
        rs, sub, tail = restate_ready(r, inst, "hol", topic, "Nap", 1, {"s": 0.0})
        try:
            done = 1
            out = {}
            for k in keys_list:
                batch = hol.records(k)
                done += len(batch)
                start = time.time()
                harness.produce(topic, batch)
                out[k] = rs.wait_completed(sub, done, timeout=60 + 3 * len(batch) * 0.01, tail=tail) - start
            return out
        finally:
            rs.stop()

    s = attempt(result, "streamapp", streamapp)
    rr = attempt(result, "Restate", restate)
    for k in keys_list:
        result.add(f"K={k} keys x 2 x 1 s sleep: time to complete all", s.get(k) if s else None, "s",
                   baseline=rr.get(k) if rr else None, baseline_name=RESTATE)
    result.notes.append("head-of-line: first produce -> all 2K completed (streamapp: /health, polled every 20 ms; "
                        "Restate: the latest completed_at); the ideal is 2 s (two 1 s sleeps in a row per key)")


# -- idle ------------------------------------------------------------------------------------
def part_idle(r: Run, inst: Installed, result: Result) -> None:
    p = sizes(r.smoke)["idle"]
    result.parameters = p
    seconds, settle = float(p["seconds"]), float(p["settle_seconds"])

    def streamapp() -> tuple[float, float]:
        src = r.topic("anchor-idle", 1)
        worker = r.workers("anchor-idle", {src: "Bench/Step"}).new()
        try:
            time.sleep(settle)
            assert worker.proc is not None
            return usage.idle_cpu([worker.proc.pid], seconds)
        finally:
            worker.stop()

    def restate() -> tuple[float, float]:
        topic = r.topic("anchor-idle-restate", 1)
        rs = Restate(r, inst, "idle").start()
        try:
            rs.subscribe(topic, "Step")
            time.sleep(settle)
            rs.alive()
            return usage.idle_cpu(rs.pids, seconds)
        finally:
            rs.stop()

    s = attempt(result, "streamapp", streamapp)
    rr = attempt(result, "Restate", restate)
    result.add(f"idle CPU over {seconds:.0f} s (empty source topic)", pick(s, 0), "% of a core",
               baseline=pick(rr, 0), baseline_name=RESTATE)
    result.add("idle RSS", pick(s, 1), "MB", baseline=pick(rr, 1), baseline_name=RESTATE)
    result.notes.append(f"idle: {settle:.0f} s after ready, CPU time (user + system) over {seconds:.0f} s of wall "
                        "time; streamapp: one worker subscribed to an empty topic; Restate: restate-server + the "
                        "SDK process with a Kafka subscription on an empty topic")


PARTS: dict[str, Part] = {
    "throughput": part_throughput,
    "latency": part_latency,
    "hol": part_hol,
    "idle": part_idle,
}
