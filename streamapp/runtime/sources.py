"""Turns source records into invocations, or dead letters with a reason.

A record becomes an ``invoke`` command on the internal topic, keyed by
``Service/key`` (repartitioning). Its invocation id comes from the source
coordinates, so a redelivered record is recognised. Records that cannot be
routed or decoded go to the dead-letter topic instead; the batch goes on.
So do records too large to travel on: a value over ``max_body_bytes`` (the
bound HTTP bodies have), or an invocation the broker refuses as too large.
A dead letter too large for the dead-letter topic keeps its key, reason and
coordinates and leaves the value out (``streamapp.value.bytes`` says its size).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from streamapp.durable import codec, ids
from streamapp.durable.errors import InvalidInputError

if TYPE_CHECKING:
    from streamapp.runtime.app import Runtime

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 1024


class Ingest:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.routes = dict(runtime.settings.subscriptions)

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
        coords = {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset}
        target = self.routes.get(msg.topic, "")
        service, _, handler_name = target.partition("/")
        try:
            key, payload = self.decode(msg, service, handler_name)
            inv_id = ids.for_record(self.runtime.settings.app_id, msg.topic, msg.partition, msg.offset)
            target_cmd = {"id": inv_id, "service": service, "key": key, "handler": handler_name,
                          "payload": payload, "not_before": None}
            try:
                await self.runtime.invoke(target_cmd, source=coords)
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
            await self.runtime.dead_letter(msg.key, msg.value, headers)
        except MessageSizeTooLargeError:
            size = {"streamapp.value.bytes": str(len(msg.value or b""))}
            await self.runtime.dead_letter(msg.key, None, {**headers, **size})

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
