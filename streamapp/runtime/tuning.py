"""Transport tuning and fixes that Faust does not expose as settings.

Fetch wait
----------

Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500``. aiokafka
keeps one fetch request in flight per broker and leaves out partitions that
still hold fetched records; data arriving meanwhile for those partitions
waits until the in-flight fetch returns, up to the full 1.5 s. Our commands
make round trips through the internal topic (actor -> log -> agent), so that
wait is paid on every step. A short maximum wait keeps a step's round trip
in milliseconds; the cost is a few more (cheap) fetch requests while idle.

Ack gate
--------
Faust's stream skips a record that arrives while flow is suspended (a
rebalance is starting) or that was fetched under an older consumer generation,
and acks it all the same; the record then counts as processed, and the next
commit can pass it although no agent ever saw it (chaos runs lost invocations
this way). With the gate installed, the consumer asks ``app.ack_gate(message)``
before it takes an ack into account: a record the gate refuses is done with
for this delivery (so rebalances do not wait for it) but its offset is never
committable, and it is read again from the committed offset later.

Rejoin
------
A worker that was frozen past its session may have been expelled without
knowing it yet. ``request_rejoin`` makes the aiokafka consumer (it runs in
Faust's consumer thread, on that thread's loop) join the group again, so
ownership comes from a fresh assignment, not from what the worker believed.

Patient bootstrap
-----------------
A worker waits for the broker at start-up (``startup.wait_for_broker``);
Faust's clients bootstrap and declare topics right after, and a broker
killed in between made the worker exit. ``patient_bootstrap`` wraps
``AIOKafkaClient.bootstrap`` and Faust's ``Transport._create_topic``
(process-wide) so that, for a window, a transient failure is tried again.

Checked against the pinned faust-streaming 0.15.3 and its aiokafka:
``AIOKafkaConsumerThread._consumer``, ``.thread_loop`` and
``GroupCoordinator.request_rejoin``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError, KafkaError
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import ack_lock

log = logging.getLogger(__name__)
T = TypeVar("T")

FETCH_MAX_WAIT_MS = 10

_original = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _original(self, transport)
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by AIOKafkaConsumer.start() to build its Fetcher
    return consumer


_original_ack = faust_consumer.Consumer.ack


def _gated_ack(self: Any, message: Any) -> bool:
    gate = getattr(self.app, "ack_gate", None)
    if gate is not None and not gate(message):
        with ack_lock:
            message.acked = True
        return False
    return _original_ack(self, message)  # type: ignore[no-any-return]


def request_rejoin(consumer: Any) -> bool:
    """Ask the group coordinator for a rejoin; False when the consumer is not running yet."""
    thread = getattr(consumer, "_thread", None)
    client = getattr(thread, "_consumer", None)
    if thread is None or client is None:
        return False
    thread.thread_loop.call_soon_threadsafe(client._coordinator.request_rejoin)
    return True


def install() -> None:
    faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
    faust_consumer.Consumer.ack = _gated_ack  # type: ignore[method-assign]


_plain_bootstrap = AIOKafkaClient.bootstrap
_plain_create_topic = faust_aiokafka.Transport._create_topic
_patient_until = 0.0  # monotonic deadline of the start-up window (patient_bootstrap)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, KafkaConnectionError) or (isinstance(exc, KafkaError) and exc.retriable)


async def patiently(call: Callable[[], Awaitable[T]], what: str) -> T:
    """Run ``call``; within the start-up window, try it again every second while the broker is away."""
    said = 0.0
    while True:
        try:
            return await call()
        except Exception as exc:
            now = time.monotonic()
            if not _transient(exc) or now >= _patient_until:
                raise
            if now - said >= 5:
                log.warning("Waiting for the broker to %s (up to %.0fs more): %r", what, _patient_until - now, exc)
                said = now
        await asyncio.sleep(1.0)


def patient_bootstrap(broker: str, patience: float) -> None:
    """For ``patience`` seconds from now, Faust's start-up waits for the broker instead of failing.

    ``wait_for_broker`` proves the broker answered once; Faust's producer and
    consumer bootstrap right after, then declare their topics, and a broker
    killed or restarting in between made the worker exit ("Unable to
    bootstrap", "Connection ... closed" while creating a topic). Within the
    window a bootstrap or a topic creation that fails for a transient reason
    is tried again every second (as are the runtime's own start-up reads,
    through ``patiently``); after it, they fail at once as before.
    """
    global _patient_until
    _patient_until = time.monotonic() + patience

    async def bootstrap(client: AIOKafkaClient) -> None:
        await patiently(lambda: _plain_bootstrap(client), f"bootstrap from {broker}")

    async def create_topic(self: Any, owner: Any, client: Any, topic: str, partitions: int, replication: int,
                           **kwargs: Any) -> None:
        await patiently(lambda: _plain_create_topic(self, owner, client, topic, partitions, replication, **kwargs),
                         f"create topic {topic}")

    AIOKafkaClient.bootstrap = bootstrap  # type: ignore[method-assign]
    faust_aiokafka.Transport._create_topic = create_topic  # type: ignore[method-assign]
