"""The workload: M ProcessPost events over K users, produced at a steady pace.

Each event's content names its user and its sequence number for that user
("u3 post 17"), so a post found in the backend says which event made it.
Malformed records (``bad_records``: bad JSON, no key, a wrong type, invalid
UTF-8, an empty value) can be interleaved with them; each carries a
``chaos.bad`` header naming its kind, which the engine ignores and the checks
read back from the topic, with the reason its dead letter must give. The
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


BAD_KINDS = ("bad-json", "no-key", "wrong-type", "bad-utf8", "empty")
BAD_HEADER = "chaos.bad"
# What the dead letter's ``streamapp.error`` must say for each kind.
REASONS = {
    "bad-json": "value is not valid JSON",
    "no-key": "record has no key",
    "wrong-type": "input.content: expected a string",
    "bad-utf8": "value is not valid UTF-8",
    "empty": "empty value",
}


@dataclass(frozen=True)
class BadRecord:
    """A record the engine must dead-letter, with the reason, and never run."""

    kind: str
    n: int

    @property
    def key(self) -> bytes | None:
        return None if self.kind == "no-key" else f"bad{self.n}".encode()

    def value(self) -> bytes:
        return {
            "bad-json": b'{"content": "bad %d", "metadata": ' % self.n,
            "no-key": json.dumps({"content": f"bad {self.n} has no key", "metadata": "chaos"}).encode(),
            "wrong-type": json.dumps({"content": self.n, "metadata": "chaos"}).encode(),
            "bad-utf8": b'{"content": "bad \xff\xfe", "metadata": "chaos"}',
            "empty": b"",
        }[self.kind]


def bad_records(count: int) -> list[BadRecord]:
    """``count`` malformed records, the kinds in turn."""
    return [BadRecord(BAD_KINDS[n % len(BAD_KINDS)], n) for n in range(count)]


def interleave(seed: int, events: list[Event], bad: list[BadRecord]) -> list[Event | BadRecord]:
    """``events`` in order, with ``bad`` at seeded positions among them."""
    rng = random.Random(f"bad-{seed}")
    slots = sorted(rng.randrange(len(events) + 1) for _ in bad)
    out: list[Event | BadRecord] = []
    i = 0
    for n, event in enumerate(events):
        while i < len(bad) and slots[i] <= n:
            out.append(bad[i])
            i += 1
        out.append(event)
    out.extend(bad[i:])
    return out


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
    """Produces ``events`` (with ``bad`` records among them) to ``topic`` spread evenly over ``window`` seconds.

    In a thread. ``acked`` counts the events the broker acknowledged, ``acked_bad`` the bad records.
    """

    def __init__(self, bootstrap: str, topic: str, events: list[Event], window: float,
                 bad: list[BadRecord] | None = None, seed: int = 0) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.events = events
        self.records = interleave(seed, events, bad or [])
        self.window = window
        self.acked = 0
        self.acked_bad = 0
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
        interval = self.window / max(1, len(self.records))
        try:
            for n, event in enumerate(self.records):
                delay = start + n * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                while not self._stop.is_set():
                    try:
                        if producer is None:
                            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                                        enable_idempotence=True, request_timeout_ms=15000)
                            await producer.start()
                        if isinstance(event, BadRecord):
                            await producer.send_and_wait(self.topic, event.value(), key=event.key,
                                                         headers=[(BAD_HEADER, event.kind.encode())])
                            self.acked_bad += 1
                        else:
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
