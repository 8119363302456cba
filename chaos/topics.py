"""Kafka reads and admin for the driver, against an explicit bootstrap address."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.harness import read_records


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp: float  # seconds
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def create_topics(bootstrap: str, names: list[str], partitions: int = 1, replicas: int = 1) -> None:
    """Create ``names``; from 3 replicas on with min.insync.replicas = replicas - 1 (as the worker does)."""
    configs = {"min.insync.replicas": str(replicas - 1)} if replicas >= 3 else {}

    async def go() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(n, partitions, replicas, topic_configs=configs) for n in names])
        finally:
            await admin.close()

    asyncio.run(go())


def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Record]:
    """Every record in ``topic`` (all partitions) up to its end offsets when called."""
    raw = asyncio.run(read_records(bootstrap, topic, timeout, partial_ok=False))
    return [Record(m.topic, m.partition, m.offset, m.timestamp / 1000.0, m.key, m.value, dict(m.headers))
            for m in raw]
