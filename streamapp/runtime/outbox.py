"""What a worker writes to Kafka besides table rows: commands to the internal topic, and dead letters.

Commands (``send``) are waited for until the broker acknowledges them
(acks=all); transient broker errors are retried with backoff: every command
is idempotent when applied, so one sent twice is harmless, and an actor
waiting here holds only its own key. The offset of each acknowledged command
is kept per partition (``written``): flow control counts what was sent but
not yet applied from it (``runtime/flow.py``).

Group send: the commands of the ``BATCHABLE`` ops that are sent in the same
turn of the event loop (the sources agent's batch, actors finishing side by
side, timers due together) travel as one record per partition
(``commands.py``), up to the record limit and ``MAX_BATCH`` commands; each
caller is answered when its record is acknowledged. A lone command is sent
as before, in a record of its own, with no wait added. Order holds where it
matters: a key's commands are sent one after the other (each caller waits
for its ack before the next), and within a record they are applied in
their order in it. A batch the broker refuses as too large is sent again
command by command, in order, so only a command too large on its own fails.

Glued commands (``enqueue(..., after=...)``): an actor's outcome command,
queued while its attempt's last journal entry still waits in this turn's
queue, rides behind that entry in the same record and is never split from
it, so the log holds both or neither, in that order (``runtime/step_sink.py``).
When a refused record is sent again command by command, a glued command
whose entry failed is not sent (it fails with the entry's error).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from streamapp.runtime import commands
from streamapp.runtime.limits import RECORD_OVERHEAD, Limits
from streamapp.runtime.metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_RECORD_LIMIT = 1_000_000  # bytes: a batch record stays below Kafka's default max.message.bytes (1 MB)


class _Queued:
    """A command waiting for this turn's record of its partition, and the commands glued behind it."""

    __slots__ = ("follows", "glued", "key", "op", "value", "waiter")

    def __init__(self, key: bytes, value: bytes, op: str, waiter: asyncio.Future[None], follows: bool) -> None:
        self.key, self.value, self.op, self.waiter, self.follows = key, value, op, waiter, follows
        self.glued: list[_Queued] | None = None


class Outbox:
    def __init__(self, app: Any, internal: Any, dead_letters: Any, partitions: int,
                 metrics: Metrics | None = None) -> None:
        """``internal`` / ``dead_letters``: the Faust topics; ``partitions``: of the internal topic."""
        self.metrics = metrics if metrics is not None else Metrics()
        self.app = app
        self.internal = internal
        self.dead_letters = dead_letters
        self.partitions = partitions
        self.limits: Limits | None = None  # the broker's record limits, once read: commands are checked first
        self.written: dict[int, int] = {}  # internal partition -> offset of the last command this worker sent there
        # internal partition -> (offset, commands beyond the first) of the batch records sent there (flow control)
        self.extra: dict[int, deque[tuple[int, int]]] = {}
        self.records = 0  # command records sent, and commands in them
        self.commands = 0
        self._queued: dict[int, list[_Queued]] = {}
        self._open: dict[asyncio.Future[None], _Queued] = {}  # waiter -> its command, while it is queued
        self._dead_lettering: set[asyncio.Future[None]] = set()
        self._sending: set[asyncio.Future[None]] = set()
        # Told of every command record the broker acknowledged: (partition, offset, value, ops) (runtime/ackapply.py)
        self.on_durable: Callable[[int, int, bytes, list[str]], None] | None = None

    async def send(self, p: int, okey: str, cmd: dict[str, Any]) -> None:
        """Produce a command to partition ``p`` and wait for the broker's ack (transient errors retried)."""
        op = str(cmd.get("op"))
        if op in commands.BATCHABLE:
            await self.enqueue(p, okey, cmd)  # type: ignore[misc]  # None only with ``after``
            return
        value = commands.encode(cmd)
        key = okey.encode()
        if self.limits is not None:
            self.limits.check_command(key, value, op)
        await self._send_record(p, key, value, [op])

    def enqueue(self, p: int, okey: str, cmd: dict[str, Any],
                after: asyncio.Future[None] | None = None) -> asyncio.Future[None] | None:
        """Queue a ``BATCHABLE`` command for this turn's record of ``p``; the future resolves at its ack.

        Raises ``CommandTooLargeError`` at once for a command over the limit.
        With ``after`` (the future of a command queued before), the command
        is glued behind that one (same record, right after it); None, and
        nothing queued, when that command already left the queue.
        """
        value = commands.encode(cmd)
        key = okey.encode()
        op = str(cmd.get("op"))
        if self.limits is not None:
            self.limits.check_command(key, value, op)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if after is not None:
            lead = self._open.get(after)
            if lead is None:
                return None
            if lead.glued is None:
                lead.glued = []
            lead.glued.append(_Queued(key, value, op, waiter, True))
            return waiter
        queued = self._queued.get(p)
        if queued is None:
            queued = self._queued[p] = []
            loop.call_soon(self._send_queued, p)  # after every caller of this turn of the loop
        item = _Queued(key, value, op, waiter, False)
        queued.append(item)
        self._open[waiter] = item
        return waiter

    def _send_queued(self, p: int) -> None:
        queued = self._queued.pop(p, [])
        limit = self.limits.command if self.limits is not None else DEFAULT_RECORD_LIMIT
        budget = min(limit, DEFAULT_RECORD_LIMIT) - RECORD_OVERHEAD - len(commands.BATCH_KEY) - commands.BATCH_FRAMING
        batch: list[_Queued] = []
        size = 0
        for item in queued:
            del self._open[item.waiter]
            unit = [item] if item.glued is None else [item, *item.glued]  # never split
            unit_size = sum(len(u.value) + 1 for u in unit)
            if batch and (size + unit_size > budget or len(batch) + len(unit) > commands.MAX_BATCH):
                self._start(self._send_batch(p, batch))
                batch, size = [], 0
            batch.extend(unit)
            size += unit_size
        if batch:
            self._start(self._send_batch(p, batch))

    def _start(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_batch(self, p: int, batch: list[_Queued]) -> None:
        try:
            if len(batch) == 1:
                item = batch[0]
                await self._send_record(p, item.key, item.value, [item.op])
            else:
                try:
                    await self._send_record(p, commands.BATCH_KEY, commands.encode_batch([i.value for i in batch]),
                                            [i.op for i in batch])
                except MessageSizeTooLargeError:  # the topic's limit is lower than read: one record each
                    log.warning("Batch of %d commands refused as too large; sending them one by one", len(batch))
                    await self._send_each(p, batch)
                    return
        except asyncio.CancelledError:
            for item in batch:
                item.waiter.cancel()
            raise
        except Exception as exc:
            for item in batch:
                if not item.waiter.done():
                    item.waiter.set_exception(exc)
            return
        for item in batch:
            if not item.waiter.done():
                item.waiter.set_result(None)

    async def _send_each(self, p: int, batch: list[_Queued]) -> None:
        """Send ``batch``'s commands one record each, in order; a glued command fails with its entry."""
        failed: Exception | None = None
        for item in batch:
            if item.follows and failed is not None:
                if not item.waiter.done():
                    item.waiter.set_exception(failed)
                continue
            failed = None
            try:
                await self._send_record(p, item.key, item.value, [item.op])
            except Exception as exc:
                failed = exc
                if not item.waiter.done():
                    item.waiter.set_exception(exc)
                continue
            if not item.waiter.done():
                item.waiter.set_result(None)

    async def _send_record(self, p: int, key: bytes, value: bytes, ops: list[str]) -> None:
        delay = 0.1
        while True:
            try:
                fut = await self.app.producer.send(self.internal.get_topic_name(), key, value, p, None, None)
                offset = (await fut).offset
                if offset > self.written.get(p, -1):
                    self.written[p] = offset
                if len(ops) > 1:
                    self.extra.setdefault(p, deque()).append((offset, len(ops) - 1))
                self.records += 1
                self.commands += len(ops)
                break
            except KafkaError as exc:
                if not exc.retriable and not isinstance(exc, KafkaTimeoutError):
                    raise
                log.warning("Command send failed, retrying op=%s in=%.1fs error=%r",
                            ops[0] if len(ops) == 1 else f"batch of {len(ops)}", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        if self.on_durable is not None:
            self.on_durable(p, offset, value, ops)

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
        invocation = "streamapp.invocation" in headers  # else a source record or a command
        self.metrics.dead_lettered(headers.get("streamapp.error", ""),
                                   headers.get("streamapp.service") if invocation else None,
                                   headers.get("streamapp.handler"))

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
        replayed = source.get("dead_letter")
        if isinstance(replayed, dict):  # a replay that failed again names the dead letter it came from
            headers["streamapp.replay.of"] = "/".join(str(replayed.get(k)) for k in ("topic", "partition", "offset"))
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
