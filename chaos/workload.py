"""The workload: M ProcessPost events over K users, produced at a steady pace.

Each event's content names its user and its sequence number for that user
("u3 post 17"), so a post found in the backend says which event made it. The
producer is idempotent (acks=all) and retries an event until the broker
acknowledges it, also across broker restarts; a retry after an unknown
outcome can still write an event twice, so the checks take the source topic,
not this list, as what was sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    user: str
    seq: int

    @property
    def content(self) -> str:
        return f"{self.user} post {self.seq}"

    def value(self) -> bytes:
        return json.dumps({"content": self.content, "metadata": "chaos"}).encode()


def events(seed: int, count: int, users: int) -> list[Event]:
    """``count`` events, each for a user drawn from ``users`` by a seeded RNG; seq counts per user."""
    rng = random.Random(f"events-{seed}")
    seqs = [0] * users
    out = []
    for _ in range(count):
        u = rng.randrange(users)
        out.append(Event(f"u{u}", seqs[u]))
        seqs[u] += 1
    return out


class Producer:
    """Produces ``events`` to ``topic`` spread evenly over ``window`` seconds, in a thread."""

    def __init__(self, bootstrap: str, topic: str, events: list[Event], window: float) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.events = events
        self.window = window
        self.acked = 0
        self.retries = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-producer", daemon=True)

    def start(self) -> Producer:
        self._thread.start()
        return self

    def done(self) -> bool:
        return not self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return self.done()

    def _run(self) -> None:
        try:
            asyncio.run(self._produce())
        except BaseException as exc:  # reported by the driver
            self.error = exc

    async def _produce(self) -> None:
        producer: AIOKafkaProducer | None = None
        start = time.monotonic()
        interval = self.window / max(1, len(self.events))
        try:
            for n, event in enumerate(self.events):
                delay = start + n * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                while not self._stop.is_set():
                    try:
                        if producer is None:
                            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                                        enable_idempotence=True, request_timeout_ms=15000)
                            await producer.start()
                        await producer.send_and_wait(self.topic, event.value(), key=event.user.encode())
                        self.acked += 1
                        break
                    except (KafkaError, OSError) as exc:
                        # Unknown outcome (the broker may be down): start a new producer and send again.
                        self.retries += 1
                        log.debug("produce failed, retrying: %r", exc)
                        if producer is not None:
                            await _close(producer)
                            producer = None
                        await asyncio.sleep(0.5)
                if self._stop.is_set():
                    return
        finally:
            if producer is not None:
                await _close(producer)


async def _close(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout=10)
    except (KafkaError, OSError, TimeoutError):
        pass
