"""Dead letters read back with their reasons, and replayed into their handlers once the cause is fixed.

A dead letter is a record of the dead-letter topic: the key and value of
what could not be processed (a source record that failed to decode, or the
payload of an invocation that failed for good), with headers naming the
reason (``streamapp.error``), the handler (``streamapp.service``,
``streamapp.handler``) and where it came from (``streamapp.source.*``,
``streamapp.invocation``).

Replaying one decodes its key and value as the source path does and makes
a new invocation of the handler durable. Its id is derived from the dead
letter's coordinates (``ids.for_dead_letter``), so replaying the same dead
letter twice runs it once: the second ``invoke`` is a duplicate while the
first invocation or its outcome is kept (``STREAMAPP_RESULTS_RETENTION``).
The invocation's source names the dead letter; if it fails again, its new
dead letter carries ``streamapp.replay.of`` = ``topic/partition/offset``.
Records that cannot be replayed (a command of the internal topic, a handler
that no longer exists, a value that still does not decode) are reported,
not dead-lettered again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streamapp.durable import codec, ids
from streamapp.durable.errors import InvalidInputError

if TYPE_CHECKING:
    from streamapp.runtime.app import Runtime

READ_TIMEOUT = 30.0  # seconds a read of the dead-letter topic may take in all
REPLAY_HEADER = "streamapp.replay.of"
FILTERS = ("service", "handler", "key", "reason", "since", "until", "partition", "offset")


NUMERIC = {"since": (float, "a time (epoch seconds)"), "until": (float, "a time (epoch seconds)"),
           "partition": (int, "a whole number"), "offset": (int, "a whole number")}


class BadFilterError(ValueError):
    """A filter that cannot be read (a time that is not a number): 400."""


@dataclasses.dataclass(frozen=True)
class Filters:
    service: str | None = None
    handler: str | None = None
    key: str | None = None
    reason: str | None = None  # a part of the reason (``streamapp.error``)
    since: float | None = None  # epoch seconds, by the record's timestamp
    until: float | None = None
    partition: int | None = None  # with ``offset``: one dead letter
    offset: int | None = None

    @classmethod
    def of(cls, query: Mapping[str, str]) -> Filters:
        values: dict[str, Any] = {name: query[name] for name in FILTERS if query.get(name)}
        values.update({name: query[name] for name in NUMERIC if name in query})  # present but empty: refused
        for name, (kind, what) in NUMERIC.items():
            if name in values:
                try:
                    values[name] = kind(values[name])
                except ValueError:
                    raise BadFilterError(f"{name}={values[name]!r} is not {what}") from None
                if not math.isfinite(values[name]):
                    raise BadFilterError(f"{name} must be finite")
        return cls(**values)

    def empty(self) -> bool:
        return self == Filters()


@dataclasses.dataclass(frozen=True)
class Letter:
    topic: str
    partition: int
    offset: int
    timestamp: float  # seconds
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    @property
    def service(self) -> str:
        return self.headers.get("streamapp.service", "")

    @property
    def handler(self) -> str:
        return self.headers.get("streamapp.handler", "")

    @property
    def reason(self) -> str:
        return self.headers.get("streamapp.error", "")

    def matches(self, f: Filters) -> bool:
        key = None if self.key is None else self.key.decode("utf-8", "replace")
        return ((f.service is None or self.service == f.service)
                and (f.handler is None or self.handler == f.handler)
                and (f.key is None or key == f.key)
                and (f.reason is None or f.reason in self.reason)
                and (f.since is None or self.timestamp >= f.since)
                and (f.until is None or self.timestamp < f.until)
                and (f.partition is None or self.partition == f.partition)
                and (f.offset is None or self.offset == f.offset))

    def view(self) -> dict[str, Any]:
        return {
            "topic": self.topic, "partition": self.partition, "offset": self.offset, "timestamp": self.timestamp,
            "key": None if self.key is None else self.key.decode("utf-8", "replace"),
            "service": self.service or None, "handler": self.handler or None, "reason": self.reason,
            "invocationId": self.headers.get("streamapp.invocation"),
            "replayOf": self.headers.get(REPLAY_HEADER),
            "valueBytes": len(self.value) if self.value is not None else None,
            "headers": {k: v for k, v in self.headers.items() if k.startswith("streamapp.source.")},
        }


async def read(kafka: dict[str, Any], topic: str, filters: Filters, limit: int) -> tuple[list[Letter], bool]:
    """The dead letters the filters match, oldest first, at most ``limit``; and whether more matched."""
    consumer = AIOKafkaConsumer(**kafka, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return [], False
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Letter] = []
        deadline = time.monotonic() + READ_TIMEOUT
        left = {tp for tp in tps if ends[tp] > 0}
        while left and time.monotonic() < deadline:
            batches = await consumer.getmany(*left, timeout_ms=500)
            for tp, records in batches.items():
                for r in records:
                    if r.offset >= ends[tp]:
                        continue
                    letter = Letter(topic, tp.partition, r.offset, r.timestamp / 1000, r.key, r.value,
                                    {k: v.decode("utf-8", "replace") for k, v in (r.headers or ())})
                    if letter.matches(filters):
                        out.append(letter)
            for tp in list(left):
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
        if left:
            raise TimeoutError(f"reading {topic} took more than {READ_TIMEOUT:.0f} s")
        out.sort(key=lambda letter: (letter.timestamp, letter.partition, letter.offset))
        return out[:limit], len(out) > limit
    finally:
        await consumer.stop()


async def replay(runtime: Runtime, letters: list[Letter]) -> tuple[list[str], list[dict[str, Any]]]:
    """Make an invocation durable for each letter; (their ids, the letters skipped with why)."""
    replayed: list[str] = []
    skipped: list[dict[str, Any]] = []
    app_id = runtime.settings.app_id
    for letter in letters:
        where = {"partition": letter.partition, "offset": letter.offset}
        handler = runtime.registry.lookup(letter.service, letter.handler) if letter.service else None
        if handler is None:
            why = (f"no handler {letter.service}/{letter.handler}" if letter.service
                   else "not an invocation (a command of the internal topic)")
            skipped.append({**where, "reason": why})
            continue
        try:
            if letter.key is None:
                raise InvalidInputError("record has no key: the key selects the object")
            key = letter.key.decode("utf-8")
            payload = codec.loads(letter.value) if handler.input_type is not None or letter.value else None
            handler.decode_input(payload)
        except (InvalidInputError, UnicodeDecodeError, ValueError) as exc:
            skipped.append({**where, "reason": f"{type(exc).__name__}: {exc}"})
            continue
        inv_id = ids.for_dead_letter(app_id, letter.topic, letter.partition, letter.offset)
        source = {"dead_letter": {"topic": letter.topic, **where}}
        await runtime.outbox.invoke({"id": inv_id, "service": letter.service, "key": key,
                                     "handler": letter.handler, "payload": payload, "not_before": None},
                                    source=source)
        replayed.append(inv_id)
        await asyncio.sleep(0)  # a long replay does not hold the loop
    return replayed, skipped
