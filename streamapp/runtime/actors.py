"""Runs invocations: one asyncio task per running attempt, bounded per worker.

An actor task executes one attempt (``durable.executor``) and turns its
outcome into commands on the internal topic. It never writes a table: the
invocations agent applies what it sends.

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
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError

from streamapp.durable import executor
from streamapp.durable.errors import CancelRequested, TooLargeError
from streamapp.durable.service import Registry
from streamapp.runtime import limits, operate, tracing
from streamapp.runtime.commands import object_key
from streamapp.runtime.leadership import Leadership
from streamapp.runtime.metrics import Metrics

log = logging.getLogger(__name__)

STOP_GRACE = 10.0  # seconds a stopping worker waits for journal entries in flight

Send = Callable[[int, str, dict[str, Any]], Awaitable[None]]
Enqueue = Callable[..., "asyncio.Future[None] | None"]
DeadLetter = Callable[[dict[str, Any], str], Awaitable[None]]


class WallClock:
    def now(self) -> float:
        return time.time()


class _Sink:
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


class ActorPool:
    def __init__(
        self,
        registry: Registry,
        send: Send,
        invoke: Callable[..., Awaitable[None]],
        dead_letter: DeadLetter,
        max_running: int,
        leadership: Leadership | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """Without ``leadership`` (tests) every actor may act, and a step goes on at its entry's ack."""
        self.registry = registry
        self.send = send
        self.invoke = invoke
        self.dead_letter = dead_letter
        self.max_running = max_running
        self.clock = WallClock()
        self.tasks: dict[str, asyncio.Task[executor.Outcome]] = {}
        self.partition_of: dict[str, int] = {}
        self.sending: set[asyncio.Future[None]] = set()  # journal entries on their way to the log
        self.owns: Callable[[int, str], bool] = lambda p, epoch: True
        # (invocation id, journal index) -> future resolved when the entry is applied (True) or refused.
        self.expect_entry: Callable[[str, int], asyncio.Future[bool]] | None = None
        self.forget_entry: Callable[[str, int], None] = lambda inv_id, index: None
        # Queues a command without waiting (``Outbox.enqueue``): steps are pipelined by one. None: each
        # entry is sent and awaited in turn (tests with a plain ``send``).
        self.enqueue: Enqueue | None = None
        if leadership is not None:
            self.owns, self.expect_entry, self.forget_entry = (
                leadership.owns, leadership.expect_entry, leadership.forget_entry)
        # Attempts waiting for a slot (``max_running``), by invocation id, in the order they came:
        # a dict, so that "already waiting?" and dropping one cost the same with 100,000 waiting.
        self.ready: dict[str, tuple[int, str, dict[str, Any], dict[str, Any]]] = {}
        self.limits = limits.Limits()  # the broker's record limits, once the runtime read them
        self.stopped = False  # the worker is shutting down: no actor starts, no step begins
        self.cancelling: set[str] = set()  # invocations cancelled by an operator: no step starts
        self.metrics = metrics if metrics is not None else Metrics()

    def waiting(self) -> int:
        return len(self.ready)

    def running(self) -> int:
        return len(self.tasks)

    def start(self, p: int, epoch: str | None, rec: dict[str, Any], state: dict[str, Any]) -> None:
        """Run an attempt of ``rec``, unless it already has an actor (one invocation, one actor)."""
        assert epoch is not None
        if self.stopped:
            # The agent may still apply a command while the worker stops (a
            # completion dispatching the key's next invocation): it stays
            # pending in the tables, for the partition's next owner.
            return
        if rec.get("cancel") is not None:  # cancelled before this worker took the partition over
            self.cancelling.add(rec["id"])
        if rec["id"] in self.tasks or rec["id"] in self.ready:
            log.warning("Invocation already has an actor, not starting another invocationID=%s", rec["id"])
            return
        if len(self.tasks) >= self.max_running:
            self.ready[rec["id"]] = (p, epoch, rec, state)
            return
        run = self._run(p, epoch, rec, state)
        if tracing.active is not None:  # the one check tracing costs when off
            run = tracing.active.attempt(rec, run)
        task = asyncio.get_running_loop().create_task(run)
        self.tasks[rec["id"]] = task
        self.partition_of[rec["id"]] = p
        inv_id: str = rec["id"]
        task.add_done_callback(lambda t: self._done(inv_id, t))

    def _done(self, inv_id: str, task: asyncio.Task[executor.Outcome]) -> None:
        if self.tasks.get(inv_id) is task:
            del self.tasks[inv_id]
            self.partition_of.pop(inv_id, None)
            self.cancelling.discard(inv_id)
        if not task.cancelled() and task.exception() is not None:
            log.error("Actor task crashed invocationID=%s", inv_id, exc_info=task.exception())
        while self.ready and len(self.tasks) < self.max_running:
            self.start(*self.ready.pop(next(iter(self.ready))))

    def stop_after_step(self, inv_id: str) -> None:
        """The actor of ``inv_id`` (running, or waiting for a slot) starts no step from now on."""
        if inv_id in self.tasks or inv_id in self.ready:
            self.cancelling.add(inv_id)

    def cancel(self, inv_id: str) -> None:
        self.cancelling.discard(inv_id)
        task = self.tasks.pop(inv_id, None)
        if task is not None:
            task.cancel()
        self.ready.pop(inv_id, None)

    async def shielded(self, send: Awaitable[None]) -> None:
        """Await ``send`` so that stopping the actor does not interrupt it."""
        fut = asyncio.ensure_future(send)
        self.track(fut)
        await asyncio.shield(fut)

    def track(self, fut: asyncio.Future[None]) -> None:
        """A journal entry (or the outcome glued to it) on its way: a stopping worker lets it land."""
        self.sending.add(fut)
        fut.add_done_callback(self.sending.discard)

    async def _outcome(self, sink: _Sink, p: int, okey: str, cmd: dict[str, Any]) -> None:
        """Send the attempt's outcome: glued behind its last entry while that is still queued."""
        if sink.pending is not None and self.enqueue is not None:
            glued = self.enqueue(p, okey, cmd, after=sink.pending[2])
            if glued is not None:
                self.track(glued)
                await sink.settle()
                await asyncio.shield(glued)
                return
        await sink.settle()
        await self.send(p, okey, cmd)

    @staticmethod
    async def _settle_quietly(sink: _Sink) -> None:
        """Settle before a failure outcome; an entry refused as too large is ended by that outcome."""
        try:
            await sink.settle()
        except TooLargeError:
            pass

    async def stop(self) -> None:
        """Worker shutdown: stop every actor, start none from now on, let journal entries being sent land."""
        self.stopped = True
        self.ready.clear()
        self.cancel_partitions(set(self.partition_of.values()))
        if self.sending:
            await asyncio.wait(set(self.sending), timeout=STOP_GRACE)

    def cancel_partitions(self, partitions: set[int]) -> None:
        """Stop every actor of ``partitions`` (they moved to another worker).

        A journal entry already being sent is not interrupted (the sink shields
        it), so a step whose function ran is not lost by the stop.
        """
        self.ready = {i: r for i, r in self.ready.items() if r[0] not in partitions}
        for inv_id in [i for i, p in self.partition_of.items() if p in partitions]:
            self.partition_of.pop(inv_id, None)
            task = self.tasks.pop(inv_id, None)
            if task is not None:
                task.cancel()

    async def _run(self, p: int, epoch: str, rec: dict[str, Any], state: dict[str, Any]) -> executor.Outcome:
        method = f"{rec['service']}/{rec['handler']}"
        okey = object_key(rec["service"], rec["key"])
        inv_id = rec["id"]
        attempt = rec["attempt"] + 1
        base = {"id": inv_id, "epoch": epoch, "attempt": attempt}
        handler = self.registry.lookup(rec["service"], rec["handler"])
        if handler is None or handler.kind != "exclusive":
            error = f"unknown handler {method}" if handler is None else f"{method} is a shared handler"
            log.error("Invocation failed method=%s invocationID=%s error=%s", method, inv_id, error)
            await self.dead_letter(rec, error)
            await self.send(p, okey, {**base, "op": "fail", "error": error})
            return executor.Failed(error)
        journal = list(rec["journal"])
        if not journal and attempt == 1:
            log.info("Handling invocation method=%s invocationID=%s", method, inv_id)
            self.metrics.count("started", rec["service"], rec["handler"])
        else:
            log.debug("Resuming invocation method=%s invocationID=%s attempt=%d replaying=%d",
                      method, inv_id, attempt, len(journal))
        sink = _Sink(self, p, epoch, rec, journal)
        try:
            outcome = await executor.execute(
                handler, invocation_id=inv_id, key=rec["key"], payload=rec["payload"], attempt=attempt,
                journal=journal, state=state, sink=sink, clock=self.clock, context=tracing.context_class,
            )
        except CancelRequested:  # an operator's cancel: no dead letter, the partition ends it cancelled
            log.info("Invocation cancelled method=%s invocationID=%s", method, inv_id)
            await self._settle_quietly(sink)
            await self.send(p, okey, {**base, "op": "fail", "error": operate.CANCELLED, "code": operate.CANCELLED_CODE})
            return executor.Failed(operate.CANCELLED, status_code=operate.CANCELLED_CODE)
        try:
            if isinstance(outcome, executor.Completed):
                self._check_completion(rec, journal, state, outcome)
                await self._outcome(sink, p, okey, {**base, "op": "complete", "result": outcome.result,
                                                    "state": outcome.state_changes})
                log.info("Invocation completed successfully method=%s invocationID=%s", method, inv_id)
            elif isinstance(outcome, executor.Parked):
                # The sleep entry is the journal's last: its index tells a late copy from the next sleep.
                await self._outcome(sink, p, okey, {**base, "op": "suspend", "wake_at": outcome.wake_at,
                                                    "index": len(journal) - 1})
            elif isinstance(outcome, executor.Retry):
                error = limits.clip(outcome.error)
                log.warning(
                    "Invocation attempt failed, retrying method=%s invocationID=%s attempt=%d retryIn=%.3fs "
                    "error=%s", method, inv_id, attempt, outcome.wake_at - self.clock.now(), error,
                )
                self.limits.check_row("invocations", inv_id, {**rec, "journal": journal, "error": error}, rec)
                await self._outcome(sink, p, okey, {**base, "op": "retry", "wake_at": outcome.wake_at,
                                                    "error": error})
                self.metrics.count("retried", rec["service"], rec["handler"])
            elif isinstance(outcome, executor.Paused):
                # A code change under an invocation in flight: keep its journal, let an
                # operator resume it once the code matches again (no dead letter).
                await sink.settle()
                error = limits.clip(outcome.error)
                log.error("Invocation paused: the handler no longer matches its journal; fix or roll back the code, "
                          "then resume it method=%s invocationID=%s error=%s", method, inv_id, error)
                self.limits.check_row("invocations", inv_id, {**rec, "journal": journal, "error": error}, rec)
                await self.send(p, okey, {**base, "op": "fail", "error": error, "pause": True})
                self.metrics.count("paused", rec["service"], rec["handler"])
            else:
                assert isinstance(outcome, executor.Failed)
                await sink.settle()  # before the dead letter: only an actor whose entries counted acts
                error = limits.clip(outcome.error)
                pause = outcome.exhausted and handler.retry.on_exhausted == "pause"
                if pause:
                    log.error("Invocation paused after exhausting retries method=%s invocationID=%s error=%s",
                              method, inv_id, error)
                    self.limits.check_row("invocations", inv_id, {**rec, "journal": journal, "error": error}, rec)
                else:
                    log.error("Invocation failed method=%s invocationID=%s error=%s", method, inv_id, error)
                    await self.dead_letter(rec, error)
                await self.send(p, okey, {**base, "op": "fail", "error": error, "pause": pause,
                                          "code": outcome.status_code})
                if pause:
                    self.metrics.count("paused", rec["service"], rec["handler"])
        except (TooLargeError, MessageSizeTooLargeError) as exc:
            # The outcome cannot be recorded as it is: end the invocation, failed, with the reason.
            await self._settle_quietly(sink)
            error = f"TooLargeError: {limits.reason(exc)}"
            log.error("Invocation failed method=%s invocationID=%s error=%s", method, inv_id, error)
            await self.dead_letter(rec, error)
            await self.send(p, okey, {**base, "op": "fail", "error": error, "code": 500})
            return executor.Failed(error, exc=exc)
        return outcome

    def _check_completion(self, rec: dict[str, Any], journal: list[Any], state: dict[str, Any],
                          outcome: executor.Completed) -> None:
        """Raise ``TooLargeError`` if the outcome row or the key's new state would not fit their changelogs."""
        if not self.limits.rows:
            return
        inv_id = rec["id"]
        self.limits.check_row(
            "results", inv_id, {**rec, "journal": journal, "status": "completed", "result": outcome.result}, rec)
        if outcome.state_changes:
            new_state = {name: value for name, value in {**state, **outcome.state_changes}.items()
                         if value is not None}
            if new_state:
                self.limits.check_row("state", object_key(rec["service"], rec["key"]), new_state, rec)
