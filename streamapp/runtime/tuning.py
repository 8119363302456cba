"""Transport tuning that Faust does not expose as settings.

Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500``. aiokafka
keeps one fetch request in flight per broker and leaves out partitions that
still hold fetched records; data arriving meanwhile for those partitions
waits until the in-flight fetch returns, up to the full 1.5 s. Our commands
make round trips through the internal topic (actor -> log -> agent), so that
wait is paid on every step. A short maximum wait keeps a step's round trip
in milliseconds; the cost is a few more (cheap) fetch requests while idle.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

FETCH_MAX_WAIT_MS = 10

_original = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _original(self, transport)
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by AIOKafkaConsumer.start() to build its Fetcher
    return consumer


def install() -> None:
    faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
