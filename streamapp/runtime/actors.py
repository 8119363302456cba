"""Runs invocations: one asyncio task per running attempt, bounded per worker.

An actor task executes one attempt (``durable.executor``) and turns its
outcome into commands on the internal topic. It never writes a table: the
invocations agent applies what it sends.

Steps are pipelined by one: each attempt's journal goes through a
``step_sink.StepSink``, whose docstring holds the protocol.
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
from streamapp.runtime.step_sink import StepSink

log = logging.getLogger(__name__)

STOP_GRACE = 10.0  # seconds a stopping worker waits for journal entries in flight

Send = Callable[[int, str, dict[str, Any]], Awaitable[None]]
Enqueue = Callable[..., "asyncio.Future[None] | None"]
DeadLetter = Callable[[dict[str, Any], str], Awaitable[None]]


class WallClock:
    def now(self) -> float:
        return time.time()


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
        fut.add_done_callback(self._landed)

    def _landed(self, fut: asyncio.Future[None]) -> None:
        self.sending.discard(fut)
        if not fut.cancelled():
            # Its error is the waiting actor's to handle; an actor that stopped waiting (the entry its
            # outcome was glued to failed first, or the actor was stopped) must not leave it unretrieved.
            fut.exception()

    async def _outcome(self, sink: StepSink, p: int, okey: str, cmd: dict[str, Any]) -> None:
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
    async def _settle_quietly(sink: StepSink) -> None:
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
        sink = StepSink(self, p, epoch, rec, journal)
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
