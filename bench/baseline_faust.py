"""Baseline: a plain Faust agent on one topic, no durability layer.

Run as ``faust -A bench.baseline_faust worker`` with

    BENCH_APP_ID     consumer group / app id      BENCH_TOPIC   the topic to consume
    BENCH_MODE       "count" (only count records) or "sleep" (``await asyncio.sleep(BENCH_SLEEP)``
                     per record, per-partition sequential like any Faust agent)
    BENCH_BROKER, BENCH_WEB_PORT, BENCH_DATADIR

``GET /stats/`` answers ``{"count", "first", "last", "assigned"}``: records
handled, wall times of the first and last one, and partitions assigned.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import faust

env = os.environ
MODE = env.get("BENCH_MODE", "count")
SLEEP = float(env.get("BENCH_SLEEP", "1.0"))

app = faust.App(
    env.get("BENCH_APP_ID", "bench-baseline"),
    broker=env.get("BENCH_BROKER", "kafka://127.0.0.1:9092"),
    datadir=env.get("BENCH_DATADIR", "/tmp/bench-baseline"),
    store="memory://",
    web_bind="127.0.0.1",
    web_host="127.0.0.1",
    web_port=int(env.get("BENCH_WEB_PORT", "6066")),
    consumer_auto_offset_reset="earliest",
    topic_replication_factor=1,
    autodiscover=False,
    worker_redirect_stdouts=False,
)
topic = app.topic(env.get("BENCH_TOPIC", "bench-baseline"), key_serializer="raw", value_serializer="raw")
stats: dict[str, Any] = {"count": 0, "first": None, "last": None}


@app.agent(topic)
async def consume(stream: Any) -> None:
    async for _ in stream:
        if MODE == "sleep":
            await asyncio.sleep(SLEEP)
        now = time.time()
        if stats["first"] is None:
            stats["first"] = now
        stats["count"] += 1
        stats["last"] = now


@app.page("/stats/")
async def stats_page(web: Any, request: Any) -> Any:
    assigned = [tp for tp in app.consumer.assignment() if tp.topic == topic.get_topic_name()]
    return web.json({**stats, "assigned": len(assigned)})
