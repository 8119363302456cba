"""Baseline: a raw aiokafka consumer in the bench process (the transport's ceiling).

It reads ``count`` records of ``topic`` while they are produced, with no
group, no commits and no decoding: the time from the first produce to the
last record received is what any Kafka consumer in Python starts from.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests import harness


async def produce_and_consume(topic: str, records: Sequence[tuple[bytes, bytes]]) -> tuple[float, float, int]:
    """Produce ``records`` to ``topic`` while consuming them; return (first produce, last receipt, received)."""
    consumer = AIOKafkaConsumer(**harness.kafka_options(), enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    producer = AIOKafkaProducer(**harness.kafka_options(), acks="all")
    await consumer.start()
    await producer.start()
    try:
        tps = await harness.assign_whole_topic(consumer, topic)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the positions now, not after the records arrive
            await consumer.position(tp)

        async def send_all() -> None:
            futures = [await producer.send(topic, key=k, value=v) for k, v in records]
            await asyncio.gather(*futures)

        first = time.time()
        sending = asyncio.ensure_future(send_all())
        received, last = 0, first
        deadline = time.monotonic() + 120
        while received < len(records) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            n = sum(len(msgs) for msgs in batch.values())
            if n:
                received += n
                last = time.time()
        await sending
        return first, last, received
    finally:
        await producer.stop()
        await consumer.stop()
