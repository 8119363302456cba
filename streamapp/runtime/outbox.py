"""What a worker writes to Kafka besides table rows: commands to the internal topic, and dead letters.

Commands (``send``) are waited for until the broker acknowledges them
(acks=all); transient broker errors are retried with backoff: every command
is idempotent when applied, so one sent twice is harmless, and an actor
waiting here holds only its own key. The offset of each acknowledged command
is kept per partition (``written``): flow control counts what was sent but
not yet applied from it (``runtime/flow.py``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from streamapp.runtime import commands
from streamapp.runtime.limits import Limits

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, app: Any, internal: Any, dead_letters: Any, partitions: int) -> None:
        """``internal`` / ``dead_letters``: the Faust topics; ``partitions``: of the internal topic."""
        self.app = app
        self.internal = internal
        self.dead_letters = dead_letters
        self.partitions = partitions
        self.limits: Limits | None = None  # the broker's record limits, once read: commands are checked first
        self.written: dict[int, int] = {}  # internal partition -> offset of the last command this worker sent there
        self._dead_lettering: set[asyncio.Future[None]] = set()

    async def send(self, p: int, okey: str, cmd: dict[str, Any]) -> None:
        """Produce a command to partition ``p`` and wait for the broker's ack (transient errors retried)."""
        value = commands.encode(cmd)
        if self.limits is not None:
            self.limits.check_command(okey.encode(), value, cmd.get("op"))
        delay = 0.1
        while True:
            try:
                fut = await self.app.producer.send(self.internal.get_topic_name(), okey.encode(), value, p, None, None)
                offset = (await fut).offset
                if offset > self.written.get(p, -1):
                    self.written[p] = offset
                return
            except KafkaError as exc:
                if not exc.retriable and not isinstance(exc, KafkaTimeoutError):
                    raise
                log.warning("Command send failed, retrying op=%s in=%.1fs error=%r", cmd.get("op"), delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def invoke(self, target: dict[str, Any], parent: str | None = None, source: Any = None) -> None:
        """Make an invocation durable in its key's inbox."""
        okey = commands.object_key(target["service"], target["key"])
        p = commands.partition_for(okey, self.partitions)
        origin = source or ({"parent": parent} if parent else None)
        await self.send(p, okey, {"op": "invoke", **target, "source": origin})

    async def fire(self, p: int, epoch: str, inv_id: str, wake_at: float) -> None:
        await self.send(p, f"timer/{inv_id}", {"op": "fire", "id": inv_id, "epoch": epoch, "at": wake_at})

    async def dead_letter(self, key: bytes | None, value: bytes | None, headers: dict[str, str]) -> None:
        fut = await self.app.producer.send(
            self.dead_letters.get_topic_name(), key, value, None, None,
            [(k, v.encode("utf-8", "replace")) for k, v in headers.items()],
        )
        await fut

    async def dead_letter_invocation(self, rec: dict[str, Any], error: str) -> None:
        source = rec.get("source") or {}
        headers = {
            "streamapp.error": error,
            "streamapp.service": rec["service"],
            "streamapp.handler": rec["handler"],
            "streamapp.invocation": rec["id"],
        }
        for name in ("topic", "partition", "offset"):
            if name in source:
                headers[f"streamapp.source.{name}"] = str(source[name])
        value = commands.encode(rec["payload"]) if "raw" not in source else source["raw"].encode()
        try:
            await self.dead_letter(rec["key"].encode(), value, headers)
        except MessageSizeTooLargeError:  # keep the reason and coordinates, leave the value out
            await self.dead_letter(rec["key"].encode(), None, {**headers, "streamapp.value.bytes": str(len(value))})

    def dead_letter_soon(self, rec: dict[str, Any], error: str) -> None:
        """Dead-letter an invocation the engine ended (it cannot wait for the broker)."""
        fut = asyncio.ensure_future(self.dead_letter_invocation(rec, error))
        self._dead_lettering.add(fut)

        def done(f: asyncio.Future[None]) -> None:
            self._dead_lettering.discard(f)
            if not f.cancelled() and f.exception() is not None:
                log.error("Could not dead-letter invocationID=%s", rec["id"], exc_info=f.exception())

        fut.add_done_callback(done)

    async def dead_letter_command(self, msg: Any, reason: str) -> None:
        """A command that can never be applied: skipped, and kept in the dead-letter topic."""
        log.error("Skipping command that cannot be applied partition=%s offset=%s reason=%s",
                  msg.partition, msg.offset, reason)
        await self.dead_letter(msg.key, msg.value, {
            "streamapp.error": reason, "streamapp.source.topic": msg.topic,
            "streamapp.source.partition": str(msg.partition), "streamapp.source.offset": str(msg.offset),
        })
