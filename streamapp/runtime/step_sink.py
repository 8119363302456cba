"""The journal sink of one attempt: its entries become ``entry`` commands, pipelined by one.

Steps, pipelined by one: after a step's function returns, its journal entry
is queued for the log and the handler's own code goes on at once; the next
durable action waits for it. The protocol, per attempt:

  1. step ``i``'s function runs only once entry ``i - 1`` is acknowledged
     (acks=all) *and* applied under this actor's epoch (``settle``); so does
     a sleep, a send, and every outcome that does more than one command
     (a dead letter, a cancel). A refused entry stops the actor, as before;
  2. entry ``i`` is queued at once when its function returns (nothing can
     interrupt that: a step whose effect happened is journaled, also when
     the actor is stopped now);
  3. when the attempt ends while its last entry still waits in the outbox's
     queue, the outcome command (complete, suspend, retry) is glued behind
     it: one record, in that order, both or neither (``Outbox.enqueue``).
     Otherwise the outcome waits for step 1's check first, then is sent;
  4. the actor then waits for the entry's check (1) and the outcome's ack.

What goes on early is only the handler's code between two steps, which runs
again on any replay anyway; no step function, send, sleep or outcome ever
acts before the entries before it count. A crash before the record is
durable loses entry and outcome together: the attempt runs again from the
journal, the step's function included (at least once, as for any step
whose entry was not yet durable). An invocation that ends right after its
last step so costs one record and one ack, not two.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from aiokafka.errors import MessageSizeTooLargeError

from streamapp.durable.errors import CancelRequested, TooLargeError
from streamapp.runtime import limits
from streamapp.runtime.commands import object_key

if TYPE_CHECKING:
    from streamapp.runtime.actors import ActorPool


class StepSink:
    """Journal sink of one attempt: entries become ``entry`` commands."""

    def __init__(self, pool: ActorPool, p: int, epoch: str, rec: dict[str, Any], journal: list[Any]) -> None:
        self.pool, self.p, self.epoch, self.rec, self.journal = pool, p, epoch, rec, journal
        self.step_started: float | None = None  # when the step being run began (its duration is a metric)
        self.journaled = len(journal)  # entries counted in ``row_bytes``
        self.row_bytes = limits.row_size({**rec, "journal": journal}) if pool.limits.rows else 0
        # The last entry queued and not yet settled: (index, kind, its ack, its applied-or-refused).
        self.pending: tuple[int, str, asyncio.Future[None], asyncio.Future[bool] | None] | None = None

    def before_step(self) -> None:
        """Refuse to start a step once this actor's partition is driven by another activation.

        A worker paused past its session wakes up with actors mid-handler;
        this stops them at their next step instead of letting them call
        downstream systems for invocations another worker now runs.
        """
        if self.pool.stopped or not self.pool.owns(self.p, self.epoch):
            raise asyncio.CancelledError(f"partition {self.p} is no longer driven by epoch {self.epoch}")
        if self.rec["id"] in self.pool.cancelling:
            raise CancelRequested()
        self.step_started = time.perf_counter()

    async def append(self, entry: dict[str, Any]) -> None:
        """Journal ``entry``; raise ``TooLargeError`` (nothing sent) if the log would refuse it.

        With the pool's ``enqueue`` the entry is queued and this returns at
        once (``settle`` waits for it); without, it returns once applied.
        """
        await self.settle()
        okey = object_key(self.rec["service"], self.rec["key"])
        self.check_row(entry)
        index = len(self.journal)
        cmd = {"op": "entry", "id": self.rec["id"], "epoch": self.epoch, "index": index,
               "entry": entry, "attempt": self.rec["attempt"] + 1}
        applied = self.pool.expect_entry(self.rec["id"], index) if self.pool.expect_entry else None
        enqueue = self.pool.enqueue
        if enqueue is not None:
            try:
                sent = enqueue(self.p, okey, cmd)
            except MessageSizeTooLargeError as exc:
                if applied is not None:
                    self.pool.forget_entry(self.rec["id"], index)
                raise TooLargeError(limits.reason(exc)) from None
            assert sent is not None
            self.pool.track(sent)
            self.pending = (index, entry["t"], sent, applied)
            return
        try:
            # Shielded: if the actor is stopped now, the step's effect already
            # happened, so its journal entry is still sent (ahead of any later
            # activation of the partition, through the same producer).
            await self.pool.shielded(self.pool.send(self.p, okey, cmd))
            await self._applied(index, applied)
        except MessageSizeTooLargeError as exc:
            raise TooLargeError(limits.reason(exc)) from None
        finally:
            if applied is not None:
                self.pool.forget_entry(self.rec["id"], index)
        self._step_done(entry["t"])

    async def settle(self) -> None:
        """Return once the last entry queued is in the log and applied under this actor's epoch.

        Raises ``TooLargeError`` if the log refused it as too large, and
        ``CancelledError`` if it does not count (another activation came first).
        """
        pending = self.pending
        if pending is None:
            return
        index, kind, sent, applied = pending
        try:
            await asyncio.shield(sent)
            await self._applied(index, applied)
        except MessageSizeTooLargeError as exc:
            raise TooLargeError(limits.reason(exc)) from None
        finally:
            self.pending = None
            if applied is not None:
                self.pool.forget_entry(self.rec["id"], index)
        self._step_done(kind)

    async def _applied(self, index: int, applied: asyncio.Future[bool] | None) -> None:
        # The ack proves the entry is in the log, not that it counts: an
        # activation of another worker may precede it there. The handler
        # acts again only once the entry was applied under this actor's epoch;
        # otherwise the partition's new owner runs this step again and
        # the journals could part (a status polled twice with two answers).
        if applied is not None and not await applied:
            raise asyncio.CancelledError(f"journal entry {index} of {self.rec['id']} was not applied "
                                         f"under epoch {self.epoch}")

    def _step_done(self, kind: str) -> None:
        if kind == "run" and self.step_started is not None:
            self.pool.metrics.step_done(self.rec["service"], self.rec["handler"],
                                        time.perf_counter() - self.step_started)
            self.step_started = None

    def check_row(self, entry: dict[str, Any]) -> None:
        """Refuse an entry that would make the invocation's record too large for its changelog."""
        if not self.pool.limits.rows:
            return
        for earlier in self.journal[self.journaled:]:
            self.row_bytes += limits.row_size(earlier) + 1
        self.journaled = len(self.journal)
        error = self.pool.limits.row_error("invocations", self.rec["id"], self.row_bytes + limits.row_size(entry) + 1)
        if error is not None:
            raise TooLargeError(error)

    async def send(self, target: dict[str, Any]) -> None:
        await self.settle()
        try:
            await self.pool.invoke(target, parent=self.rec["id"])
        except MessageSizeTooLargeError as exc:
            method = f"{target['service']}/{target['handler']}"
            raise TooLargeError(f"invocation of {method}: {limits.reason(exc)}") from None
