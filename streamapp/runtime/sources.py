"""Turns source records into invocations, or dead letters with a reason.

A record becomes an ``invoke`` command on the internal topic, keyed by
``Service/key`` (repartitioning). Its invocation id comes from the source
coordinates, so a redelivered record is recognised. Records that cannot be
routed or decoded go to the dead-letter topic instead; the batch goes on.
So do records too large to travel on: a value over ``max_body_bytes`` (the
bound HTTP bodies have), or an invocation the broker refuses as too large.
A dead letter too large for the dead-letter topic keeps its key, reason and
coordinates and leaves the value out (``streamapp.value.bytes`` says its size).

Topic incarnations
------------------
The coordinates include the source topic's id (``runtime/topic_ids.py``): a
topic deleted and created again restarts at offset 0, and without the id its
new records would be taken for redeliveries of the old ones. Records carry no
topic id (aiokafka fetches by name), so the id is attributed by bracketing:
the broker is asked for it when the partition is assigned, and again for
every batch before the batch is admitted (so after its records were
fetched). Topic ids are never reused, so when both answers give the same id,
the topic was that incarnation for the whole interval, and so were the
records fetched in it. When the batch's answer differs, the topic was
recreated while assigned here: the batch may hold records of either
incarnation, so none of it is used; the topic's partitions are read again
from the start of the new incarnation, whose records nobody attributed yet.
A timer asks too (``watch``), for a recreated topic whose records all lie
below the read position and so never reach a batch.

The batch's answer usually comes with the fetch: the consumer writes a
Metadata request behind each fetch of source partitions, on the fetch's
connection, and keeps what the two answers around that fetch confirm
(``runtime/faust_fetch_ids.py``). A batch whose every record a fetch
confirmed as the known incarnation is kept without asking; any other asks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from faust.types import TP

from streamapp.durable import codec, ids
from streamapp.durable.errors import InvalidInputError
from streamapp.runtime import faust_readers, tracing
from streamapp.runtime.faust_fetch_ids import FetchedIds
from streamapp.runtime.topic_ids import TopicIds

if TYPE_CHECKING:
    from streamapp.runtime.app import Runtime

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 1024


class Ingest:
    def __init__(self, runtime: Runtime, lookup: Callable[[list[str]], Awaitable[dict[str, str]]] | None = None,
                 ) -> None:
        self.runtime = runtime
        self.routes = dict(runtime.settings.subscriptions)
        self._topic_ids = TopicIds(runtime.kafka)
        self.lookup = lookup or self._topic_ids.lookup  # topic name -> topic id, asked of the broker now
        self.topic_ids: dict[str, str] = {}  # the incarnation each source topic is read as
        self.changes: dict[str, int] = {}  # how often each source topic was found recreated
        self.fetched = FetchedIds(self.routes)  # what the consumer's fetches confirmed (installed by the consumer)
        self.confirmed: dict[str, int] = {"fetch": 0, "asked": 0}  # batches, by where their topic ids came from

    async def close(self) -> None:
        await self._topic_ids.close()

    async def on_assigned(self, assigned: Iterable[TP]) -> None:
        """Ask for the topic ids of the assigned source topics before their records are fetched.

        A topic recreated since it was last seen here is read from its start,
        not from the group's commit: the broker drops the old topic's commits
        only some time after the deletion, and a commit Faust makes for the
        old topic can land on the new one. Without an answer, the id known
        before stays: the first batch's answer is compared with it.
        """
        topics = sorted({tp.topic for tp in assigned if tp.topic in self.routes})
        if not topics:
            return
        try:
            found = await asyncio.wait_for(self.lookup(topics), timeout=10)
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("Could not read topic ids topics=%s error=%r", topics, exc)
            return
        for topic, topic_id in found.items():
            known = self.topic_ids.get(topic)
            if known is not None and known != topic_id:
                log.warning("Source topic recreated topic=%s was=%s now=%s", topic, known, topic_id)
                self.changes[topic] = self.changes.get(topic, 0) + 1
                guard = self.runtime.delivery.guards["sources"]
                for tp in assigned:
                    if tp.topic == topic:  # sought from the guard's tick, once Faust's own seeks are done
                        guard.restart_at(tp, 0, probe=True)
            self.topic_ids[topic] = topic_id

    async def confirm(self, events: list[Any]) -> list[Any]:
        """The events whose topic incarnation is known; those of a topic recreated meanwhile are dropped.

        Asks the broker for the topic ids now, after the records were fetched.
        A dropped record is done with for this delivery and never acked (the
        commit stays below it); its partition is read again from the start
        of the new incarnation.
        """
        topics = sorted({event.message.topic for event in events})
        if not topics:
            return events
        if self.fetch_confirms(events):
            self.confirmed["fetch"] += 1
            return events
        self.confirmed["asked"] += 1
        before = {topic: self.changes.get(topic, 0) for topic in topics}
        found = await self._current(topics, events)
        if found is None:  # a rebalance overtook the batch: Faust delivers it again
            for event in events:
                faust_readers.mark_done(event.message)
            return []
        await self._compare(found)
        # Changed now, or by ``watch`` while the lookup ran: either way the batch is of unknown incarnation.
        recreated = {topic for topic in topics if self.changes.get(topic, 0) != before[topic]}
        kept = []
        for event in events:
            if event.message.topic in recreated:
                faust_readers.mark_done(event.message)
            else:
                kept.append(event)
        return kept

    def fetch_confirms(self, events: list[Any]) -> bool:
        """Whether the fetch that brought each record confirmed it as the incarnation known here."""
        id_of = self.fetched.id_of
        for event in events:
            msg = event.message
            known = self.topic_ids.get(msg.topic)
            if known is None or id_of(msg.topic, msg.partition, msg.offset) != known:
                return False
        return True

    async def watch(self) -> None:
        """Look for assigned source topics recreated meanwhile, also when no record arrives.

        The recreated topic's records may all lie below the read position
        (say one record at offset 0 while the consumer waits at offset 1):
        no batch would ever come to reveal the new incarnation.
        """
        assignment = self.runtime.app.consumer.assignment()
        topics = sorted({tp.topic for tp in assignment if tp.topic in self.routes})
        if not topics:
            return
        try:
            found = await asyncio.wait_for(self.lookup(topics), timeout=10)
        except (TimeoutError, KafkaError, OSError):
            return  # deleted, or no answer: the next tick or batch asks again
        await self._compare(found)

    async def _compare(self, found: dict[str, str]) -> None:
        for topic, topic_id in found.items():
            known = self.topic_ids.setdefault(topic, topic_id)
            if known != topic_id:
                self.topic_ids[topic] = topic_id
                self.changes[topic] = self.changes.get(topic, 0) + 1
                await self.restart(topic, known, topic_id)

    async def _current(self, topics: list[str], events: list[Any]) -> dict[str, str] | None:
        delay = 0.1
        while True:
            try:
                found = await asyncio.wait_for(self.lookup(topics), timeout=10)
                missing = set(topics) - set(found)
                if not missing:
                    return found
                error: Exception = KeyError(sorted(missing))
            except (TimeoutError, KafkaError, OSError) as exc:  # a deleted topic: unknown until recreated
                error = exc
            if any(self.runtime.delivery.overtaken(event.message) for event in events):
                return None
            log.warning("Could not read topic ids, retrying topics=%s in=%.1fs error=%r", topics, delay, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def restart(self, topic: str, was: str, now: str) -> None:
        """Read ``topic``'s partitions assigned here again from the start of its new incarnation."""
        tps = [tp for tp in self.runtime.app.consumer.assignment() if tp.topic == topic]
        log.warning("Source topic recreated while assigned topic=%s was=%s now=%s: reading partitions=%s "
                    "again from the start", topic, was, now, sorted(tp.partition for tp in tps))
        guard = self.runtime.delivery.guards["sources"]
        guard.forget(tps)
        if not tps:
            return
        try:
            earliest = await asyncio.wait_for(self.runtime.app.consumer.earliest_offsets(*tps), timeout=10)
        except Exception as exc:  # offset 0: the guard then asks the broker where the log starts
            log.warning("Could not read the start of the recreated topic topic=%s error=%r", topic, exc)
            earliest = dict.fromkeys(tps, 0)
        for tp in tps:
            # Not the group's commit: one made for the old topic may have landed on the new one.
            guard.restart_at(tp, int(earliest[tp]))
            await self.runtime.delivery.seek(tp, guard.next[tp])

    async def batch(self, events: list[Any]) -> None:
        """Make every record of the batch durable (as an invocation or a dead letter).

        Records of one key go in order, each after the previous one's ack (a
        send retried after a broker error must not land behind a later record
        of its key); different keys go concurrently.
        """
        chains: dict[tuple[str, bytes | None], list[Any]] = {}
        for event in events:
            msg = event.message
            service = self.routes.get(msg.topic, "").partition("/")[0]
            chains.setdefault((service, msg.key), []).append(msg)
        await asyncio.gather(*(self.chain(msgs) for msgs in chains.values()))

    async def chain(self, msgs: list[Any]) -> None:
        for msg in msgs:
            await self.one(msg)

    async def one(self, msg: Any) -> None:
        topic_id = self.topic_ids[msg.topic]
        coords = {"topic": msg.topic, "topic_id": topic_id, "partition": msg.partition, "offset": msg.offset}
        target = self.routes.get(msg.topic, "")
        service, _, handler_name = target.partition("/")
        try:
            key, payload = self.decode(msg, service, handler_name)
            inv_id = ids.for_record(self.runtime.settings.app_id, msg.topic, topic_id, msg.partition, msg.offset)
            target_cmd = {"id": inv_id, "service": service, "key": key, "handler": handler_name,
                          "payload": payload, "not_before": None}
            if tracing.active is not None:
                tracing.active.stamp(target_cmd, tracing.kafka_headers(msg.headers), tracing.source_attributes(coords))
            try:
                await self.runtime.outbox.invoke(target_cmd, source=coords)
            except MessageSizeTooLargeError as exc:
                # Escaping can make the command larger than the value was.
                raise InvalidInputError("invocation too large for the internal topic") from exc
        except InvalidInputError as exc:
            await self.reject(msg, exc, service, handler_name, coords)
        except KafkaError:
            raise  # transient ones were retried in Runtime.send; the agent restarts from the commit
        except Exception as exc:  # a record that breaks decoding must not take the batch down with it
            log.exception("Unexpected error on record topic=%s partition=%s offset=%s",
                          msg.topic, msg.partition, msg.offset)
            await self.reject(msg, exc, service, handler_name, coords)

    async def reject(self, msg: Any, exc: Exception, service: str, handler_name: str,
                     coords: dict[str, Any]) -> None:
        """Dead-letter one record with the reason and its source coordinates."""
        log.warning(
            "Dead-lettering record topic=%s partition=%s offset=%s reason=%s",
            msg.topic, msg.partition, msg.offset, exc,
        )
        headers = {
            "streamapp.error": f"{type(exc).__name__}: {exc}",
            "streamapp.service": service,
            "streamapp.handler": handler_name,
            **{f"streamapp.source.{k}": str(v) for k, v in coords.items()},
        }
        await self.dead_letter(msg, headers)

    async def dead_letter(self, msg: Any, headers: dict[str, str]) -> None:
        try:
            await self.runtime.outbox.dead_letter(msg.key, msg.value, headers)
        except MessageSizeTooLargeError:
            size = {"streamapp.value.bytes": str(len(msg.value or b""))}
            await self.runtime.outbox.dead_letter(msg.key, None, {**headers, **size})

    def decode(self, msg: Any, service: str, handler_name: str) -> tuple[str, Any]:
        handler = self.runtime.registry.lookup(service, handler_name)
        if handler is None:
            raise InvalidInputError(f"no handler {service}/{handler_name} for topic {msg.topic}")
        if msg.key is None:
            raise InvalidInputError("record has no key: the key selects the object")
        if len(msg.key) > MAX_KEY_BYTES:
            raise InvalidInputError(f"key longer than {MAX_KEY_BYTES} bytes")
        try:
            key = msg.key.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError("key is not valid UTF-8") from exc
        limit = self.runtime.settings.max_body_bytes
        if msg.value is not None and len(msg.value) > limit:
            raise InvalidInputError(f"value of {len(msg.value)} bytes is too large (limit {limit})")
        payload = codec.loads(msg.value) if handler.input_type is not None or msg.value else None
        handler.decode_input(payload)
        return key, payload
