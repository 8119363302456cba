"""The invocation state machine: applies commands to the tables, in log order.

One writer per partition: only the invocations agent calls ``apply``, inside
its stream iteration, so every table write goes to the partition of the
command being applied and reaches the changelog before Faust commits the
command's offset (at-least-once: Faust flushes the producer, then commits).

Per partition the engine keeps, in memory, a key-serial actor map: for each
key the invocation in flight (running, sleeping, retrying or paused) and the
queue behind it. It is rebuilt from the ``invocations`` table when this worker's
``activate`` command for the partition is applied; everything the log holds
before that command has been applied by then, so no journaled step is lost.

Fencing: actor and scheduler commands carry the epoch (activation token) they
were issued under; a command from an older epoch (a worker that lost the
partition) is ignored.

Staleness: any command may arrive twice or late (the producer resends after a
timeout). Each carries what makes a late copy recognisable, and applying
ignores it then:

    entry     journal ``index`` and ``attempt``: only the next entry of the running attempt
    suspend   ``index`` of the sleep entry: only while that sleep has not fired
    retry     ``attempt``: only the outcome of the running attempt (rec.attempt + 1)
    complete  ``attempt``: likewise
    fail      ``attempt``: likewise
    fire      ``at``: only the timer armed for that wake-up time
    activate  the epoch: a second copy of the live epoch's activation changes nothing

Fields missing from a command (written by an older version) are not checked.

Applying never advances the partition's applied offset unless the command was
applied: a command that raises is applied again (``ApplyError``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamapp.runtime.commands import object_key
from streamapp.runtime.expiry import Expiry
from streamapp.runtime.limits import Limits, RowTooLargeError
from streamapp.runtime.store import Tables, expiry_key

if TYPE_CHECKING:
    from streamapp.runtime.actors import ActorPool
    from streamapp.runtime.scheduler import Scheduler

log = logging.getLogger(__name__)

IN_FLIGHT = ("running", "sleeping", "retrying", "paused")
RECENT_MAX = 20_000


def started(rec: dict[str, Any]) -> bool:
    """Whether an invocation was under way: in flight, or dispatched and journaled or retried."""
    return rec["status"] in IN_FLIGHT or bool(rec["journal"]) or rec["attempt"] > 0


@dataclass
class PartitionState:
    epoch: str | None = None
    live: bool = False
    inflight: dict[str, str] = field(default_factory=dict)  # object key -> invocation id
    queues: dict[str, deque[str]] = field(default_factory=dict)  # object key -> queued ids

    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())


class ApplyError(Exception):
    """A valid command could not be applied; its offset must not be committed."""


class Engine(Expiry):
    def __init__(self, tables: Tables, actors: ActorPool, scheduler: Scheduler) -> None:
        self.tables = tables
        self.actors = actors
        self.on_foreign_activation: Callable[[int], None] | None = None
        self.scheduler = scheduler
        self.partitions: dict[int, PartitionState] = {}
        self.my_tokens: dict[int, str] = {}  # activations this worker asked for
        self.applied: dict[int, int] = {}  # highest offset applied per partition, by this process
        self.recent: dict[str, dict[str, Any]] = {}  # write-through cache of records in progress
        self.waiters: dict[str, list[Any]] = {}  # invocation id -> futures awaiting completion
        self.waiter_partition: dict[str, int] = {}
        self.entry_waiters: dict[tuple[str, int], asyncio.Future[bool]] = {}  # actors awaiting their entry
        self.finished = {"completed": 0, "failed": 0}  # applied by this worker since it started
        self.expired_to: dict[int, tuple[str | None, str]] = {}  # p -> (epoch, last expiry key dropped)
        self.expired_log: dict[int, tuple[float, int]] = {}  # p -> (last logged, dropped since)
        self.expire_bucket = (0.0, float("-inf"))  # (rows this worker may still expire, when counted): full
        # Liveness of this process: the runtime's timer stamps ``alive_at``; a gap
        # longer than ``stall_limit`` means the process was frozen (or starved) long
        # enough to have been expelled from the group without noticing yet.
        self.alive_at: float | None = None  # None until the timer first ran
        self.stall_limit = float("inf")
        self.limits = Limits()  # the broker's record limits (runtime/limits.py), set before the first apply
        self.on_dead_letter: Callable[[dict[str, Any], str], None] | None = None

    # -- partition lifecycle ---------------------------------------------
    def part(self, p: int) -> PartitionState:
        return self.partitions.setdefault(p, PartitionState())

    def expect_activation(self, p: int, token: str) -> None:
        self.my_tokens[p] = token

    def stop_partitions(self, lost: set[int]) -> None:
        """Stop the actors and timers of partitions this worker no longer owns."""
        if not lost:
            return
        self.actors.cancel_partitions(lost)
        self.scheduler.drop_partitions(lost)
        self.recent.clear()  # another worker writes those records now
        for p in lost:
            self.partitions.pop(p, None)
            self.my_tokens.pop(p, None)
        for inv_id in [i for i, p in self.waiter_partition.items() if p in lost]:
            del self.waiter_partition[inv_id]
            for fut in self.waiters.pop(inv_id, []):
                if not fut.done():
                    fut.set_result({"moved": True})

    def release(self, lost: set[int]) -> None:
        """Partitions that moved away: stop them and forget how far they were read."""
        self.stop_partitions(lost)
        for p in lost:
            self.applied.pop(p, None)

    def add_waiter(self, inv_id: str, p: int) -> asyncio.Future[dict[str, Any]]:
        """A future resolved with the invocation's final record when it finishes here."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(inv_id, []).append(fut)
        self.waiter_partition[inv_id] = p
        return fut

    def remove_waiter(self, inv_id: str, fut: asyncio.Future[dict[str, Any]]) -> None:
        """Forget one caller's waiter (all of an invocation's are resolved when it finishes)."""
        futs = self.waiters.get(inv_id)
        if futs is None:
            return
        if fut in futs:
            futs.remove(fut)
        if not futs:
            del self.waiters[inv_id]
            self.waiter_partition.pop(inv_id, None)

    def expect_entry(self, inv_id: str, index: int) -> asyncio.Future[bool]:
        """A future resolved when journal entry ``index`` of ``inv_id`` is applied (True) or refused (False)."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.entry_waiters[(inv_id, index)] = fut
        return fut

    def forget_entry(self, inv_id: str, index: int) -> None:
        self.entry_waiters.pop((inv_id, index), None)

    def _entry_applied(self, cmd: dict[str, Any], applied: bool) -> None:
        fut = self.entry_waiters.get((cmd["id"], cmd["index"]))
        if fut is not None and not fut.done():
            fut.set_result(applied)

    def owns(self, p: int, epoch: str) -> bool:
        """Whether actors started under ``epoch`` may still act for partition ``p``.

        Not while the process has just woken from a stall: until the runtime
        confirmed it still belongs to the group, another worker may drive ``p``.
        """
        st = self.partitions.get(p)
        fresh = self.alive_at is None or time.monotonic() - self.alive_at <= self.stall_limit
        return fresh and st is not None and st.live and st.epoch == epoch

    def is_running(self, inv_id: str) -> bool:
        return any(inv_id in st.inflight.values() for st in self.partitions.values())

    def live_partitions(self) -> set[int]:
        return {p for p, st in self.partitions.items() if st.live}

    def pending_count(self) -> int:
        return sum(st.queued() for st in self.partitions.values()) + self.actors.waiting()

    # -- apply -------------------------------------------------------------
    def apply(self, p: int, offset: int, cmd: dict[str, Any]) -> None:
        """Apply one well-formed command (see ``invalid``) at ``offset`` of partition ``p``.

        Raises ``ApplyError`` when applying failed; the offset then counts as
        not applied, so the same command is applied again when read again.
        """
        # Faust drops uncommitted acks on every rebalance, so a partition this
        # worker keeps is consumed again from its last commit. Those commands
        # are already in the tables and in the live actor map: skip them.
        if offset <= self.applied.get(p, -1):
            return
        op = cmd["op"]
        self.tables.positions.applying[p] = offset  # every row this writes says so (runtime/changelog.py)
        try:
            if op in ("entry", "suspend", "retry", "complete", "fail", "fire") and not self._current_epoch(p, cmd):
                log.debug("Ignoring stale command op=%s id=%s epoch=%s", op, cmd.get("id"), cmd.get("epoch"))
                if op == "entry":
                    self._entry_applied(cmd, False)
            else:
                getattr(self, f"_on_{op}")(p, offset, cmd)
        except RowTooLargeError as exc:  # raised before the row was written
            self._fail_too_large(p, exc)
        except Exception as exc:
            raise ApplyError(f"command op={op} id={cmd.get('id')} partition={p} offset={offset}: {exc!r}") from exc
        self.applied[p] = offset

    def _current_epoch(self, p: int, cmd: dict[str, Any]) -> bool:
        st = self.part(p)
        if st.epoch is None:
            meta = self.tables.meta.get(f"p{p}")
            st.epoch = meta["epoch"] if meta else None
        return bool(cmd.get("epoch") == st.epoch)

    def _record(self, inv_id: str) -> dict[str, Any] | None:
        rec = self.recent.get(inv_id)
        if rec is None:
            rec = self.tables.invocations.get(inv_id)
        return dict(rec) if rec is not None else None

    def _save(self, rec: dict[str, Any]) -> None:
        rec["updated"] = time.time()
        self.limits.check_row("invocations", rec["id"], rec, rec)
        self.tables.invocations[rec["id"]] = rec
        self._remember(rec)

    def _remember(self, rec: dict[str, Any]) -> None:
        """Keep records of invocations in progress in memory (the engine is their only writer)."""
        if rec["status"] in ("pending", "running"):
            self.recent[rec["id"]] = rec
            if len(self.recent) > RECENT_MAX:
                del self.recent[next(iter(self.recent))]
        else:
            self.recent.pop(rec["id"], None)

    def _on_activate(self, p: int, offset: int, cmd: dict[str, Any]) -> None:
        st = self.part(p)
        if st.live and st.epoch == cmd["epoch"]:
            return  # a second copy of the activation this partition runs under
        st.epoch = cmd["epoch"]
        self.tables.meta[f"p{p}"] = {"epoch": cmd["epoch"]}
        if self.my_tokens.get(p) != cmd["epoch"]:
            # Another worker's (or an earlier life's) activation. If this worker
            # was driving the partition, it lost it without noticing (paused past
            # its session, expelled and re-admitted): stop its actors now, and let
            # the runtime claim the partition again if Kafka still assigns it here.
            if not st.live:
                return  # still catching up: this worker's own activation comes later in the log
            self.stop_partitions({p})
            self.part(p).epoch = cmd["epoch"]
            if self.on_foreign_activation is not None:
                self.on_foreign_activation(p)
            return
        if st.live:  # driven here under an earlier epoch of this worker's: its actors and timers stop
            self.actors.cancel_partitions({p})
            self.scheduler.drop_partitions({p})
        st.live = True
        st.inflight.clear()
        st.queues.clear()
        # Per key: what was already under way (in flight, or dispatched and
        # journaled or retried before the last owner stopped) resumes first;
        # the rest queue in arrival order.
        entries = sorted((rec for _, rec in self.tables.partition_items(self.tables.invocations, p)),
                         key=lambda rec: (not started(rec), rec["seq"]))
        resumed = 0
        for rec in entries:
            okey = object_key(rec["service"], rec["key"])
            status = rec["status"]
            if status in IN_FLIGHT:
                st.inflight[okey] = rec["id"]
                if status == "running":
                    self.actors.start(p, st.epoch, rec, self._state(okey))
                    resumed += 1
                elif status in ("sleeping", "retrying"):
                    self.scheduler.add(p, st.epoch, rec["id"], rec["wake_at"])
            elif status == "scheduled":
                self.scheduler.add(p, st.epoch, rec["id"], rec["not_before"])
            elif okey not in st.inflight and started(rec):  # dispatched and half done when the last owner stopped
                st.inflight[okey] = rec["id"]
                self.actors.start(p, st.epoch, rec, self._state(okey))
                resumed += 1
            else:  # pending: queued, or dispatched (nothing journaled) when the last owner stopped
                st.queues.setdefault(okey, deque()).append(rec["id"])
        for okey in list(st.queues):
            if okey not in st.inflight:
                self._dispatch_next(p, okey)
        log.info(
            "Partition activated partition=%s unfinished=%d resumed=%d sleeping=%d",
            p, len(entries), resumed, self.scheduler.count(p),
        )

    def _on_invoke(self, p: int, offset: int, cmd: dict[str, Any]) -> None:
        inv_id = cmd["id"]
        if self.tables.invocations.get(inv_id) is not None or self.tables.results.get(inv_id) is not None:
            log.info("Duplicate invocation ignored invocationID=%s", inv_id)
            return
        okey = object_key(cmd["service"], cmd["key"])
        now = time.time()
        delayed = cmd.get("not_before") is not None and cmd["not_before"] > now
        rec = {
            "id": inv_id, "service": cmd["service"], "handler": cmd["handler"], "key": cmd["key"],
            "payload": cmd.get("payload"), "status": "scheduled" if delayed else "pending",
            "attempt": 0, "journal": [], "seq": offset, "p": p, "created": now,
            "not_before": cmd.get("not_before"), "wake_at": None, "result": None, "error": None,
            "source": cmd.get("source"),
        }
        self._save(rec)
        st = self.part(p)
        if delayed:
            self.tables.timers[inv_id] = {"wake_at": cmd["not_before"], "p": p}
            if st.live:
                self.scheduler.add(p, st.epoch, inv_id, cmd["not_before"])
            return
        if st.live:
            st.queues.setdefault(okey, deque()).append(inv_id)
            if okey not in st.inflight:
                self._dispatch_next(p, okey)

    def _running(self, cmd: dict[str, Any]) -> dict[str, Any] | None:
        """The record an actor command applies to, if its attempt is still current.

        Dispatching does not write the record (it stays "pending" until the
        attempt's outcome); the epoch check already rejects commands of actors
        from an earlier activation.
        """
        rec = self._record(cmd["id"])
        if rec is None or rec["status"] not in ("pending", "running"):
            return None
        if cmd.get("attempt") is not None and cmd["attempt"] != rec["attempt"] + 1:
            return None  # from an attempt that already ended
        return rec

    def _on_entry(self, p: int, offset: int, cmd: dict[str, Any]) -> None:
        rec = self._running(cmd)
        if rec is None or len(rec["journal"]) != cmd["index"]:
            # A late copy (its waiter was resolved by the first), or the attempt ended.
            self._entry_applied(cmd, rec is not None and len(rec["journal"]) > cmd["index"])
            return
        rec["journal"] = [*rec["journal"], cmd["entry"]]
        self._save(rec)
        self._entry_applied(cmd, True)

    def _park(self, p: int, rec: dict[str, Any], status: str, wake_at: float) -> None:
        rec["status"] = status
        rec["wake_at"] = wake_at
        self._save(rec)
        self.tables.timers[rec["id"]] = {"wake_at": wake_at, "p": p}
        st = self.part(p)
        if st.live:
            self.scheduler.add(p, st.epoch, rec["id"], wake_at)

    def _on_suspend(self, p: int, offset: int, cmd: dict[str, Any]) -> None:
        rec = self._running(cmd)
        index = cmd.get("index")
        if rec is not None and index is not None:
            journal = rec["journal"]
            if len(journal) != index + 1 or journal[index].get("t") != "sleep" or journal[index].get("fired"):
                return  # a copy of a suspension whose sleep already fired
        if rec is not None:
            self._park(p, rec, "sleeping", cmd["wake_at"])

    def _on_retry(self, p: int, offset: int, cmd: dict[str, Any]) -> None:
        rec = self._running(cmd)
        if rec is not None:
            rec["attempt"] = cmd["attempt"]
            rec["error"] = cmd["error"]
            self._park(p, rec, "retrying", cmd["wake_at"])

    def _on_complete(self, p: int, offset: int, cmd: dict[str, Any]) -> None:
        rec = self._running(cmd)
        if rec is None:
            return
        okey = object_key(rec["service"], rec["key"])
        self.limits.check_row("results", rec["id"], {**rec, "status": "completed", "result": cmd.get("result")}, rec)
        changes = cmd.get("state") or {}
        if changes:
            state = dict(self.tables.state.get(okey) or {})
            for name, value in changes.items():
                if value is None:
                    state.pop(name, None)
                else:
                    state[name] = value
            self.limits.check_row("state", okey, state, rec)  # before any write: a refusal leaves state as it was
            if state:
                self.tables.state[okey] = state
            elif self.tables.state.get(okey) is not None:
                del self.tables.state[okey]
        rec["status"] = "completed"
        rec["result"] = cmd.get("result")
        rec["attempt"] = cmd.get("attempt", rec["attempt"])
        self._finish(p, rec)

    def _on_fail(self, p: int, offset: int, cmd: dict[str, Any]) -> None:
        rec = self._running(cmd)
        if rec is None:
            return
        rec["error"] = cmd["error"]
        rec["code"] = cmd.get("code", 500)
        rec["attempt"] = cmd.get("attempt", rec["attempt"])
        if cmd.get("pause"):
            rec["status"] = "paused"
            self._save(rec)
            return
        rec["status"] = "failed"
        self._finish(p, rec)

    def _on_fire(self, p: int, offset: int, cmd: dict[str, Any]) -> None:
        rec = self._record(cmd["id"])
        if rec is None:
            return
        armed = rec["not_before"] if rec["status"] == "scheduled" else rec["wake_at"]
        if cmd.get("at") is not None and cmd["at"] != armed:
            return  # a copy of the fire of an earlier timer of this invocation
        st = self.part(p)
        if rec["status"] in ("sleeping", "retrying"):
            self._drop_timer(rec["id"])
            journal = rec["journal"]
            if rec["status"] == "sleeping" and journal and journal[-1]["t"] == "sleep":
                rec["journal"] = [*journal[:-1], {**journal[-1], "fired": True}]
            rec["status"] = "running"
            rec["wake_at"] = None
            self._save(rec)
            if st.live:
                self.actors.start(p, st.epoch, rec, self._state(object_key(rec["service"], rec["key"])))
        elif rec["status"] == "scheduled":
            self._drop_timer(rec["id"])
            rec["status"] = "pending"
            rec["seq"] = offset  # it joins its key's queue now, behind what arrived before
            self._save(rec)
            okey = object_key(rec["service"], rec["key"])
            if st.live:
                st.queues.setdefault(okey, deque()).append(rec["id"])
                if okey not in st.inflight:
                    self._dispatch_next(p, okey)

    def _on_resume(self, p: int, offset: int, cmd: dict[str, Any]) -> None:
        rec = self._record(cmd["id"])
        if rec is None or rec["status"] != "paused":
            return
        rec["status"] = "running"
        rec["attempt"] = 0
        rec["error"] = None
        self._save(rec)
        st = self.part(p)
        if st.live:
            self.actors.start(p, st.epoch, rec, self._state(object_key(rec["service"], rec["key"])))

    def _on_kill(self, p: int, offset: int, cmd: dict[str, Any]) -> None:
        rec = self._record(cmd["id"])
        if rec is None:
            return
        self.actors.cancel(rec["id"])
        self._drop_timer(rec["id"])
        okey = object_key(rec["service"], rec["key"])
        queue = self.part(p).queues.get(okey)
        if queue and rec["id"] in queue:
            queue.remove(rec["id"])
        rec["status"] = "failed"
        rec["error"] = "KilledError: killed by an operator"
        self._finish(p, rec)

    # -- helpers -----------------------------------------------------------
    def _state(self, okey: str) -> dict[str, Any]:
        return dict(self.tables.state.get(okey) or {})

    def _drop_timer(self, inv_id: str) -> None:
        if self.tables.timers.get(inv_id) is not None:
            del self.tables.timers[inv_id]

    def _finish(self, p: int, rec: dict[str, Any]) -> None:
        self.finished[rec["status"]] += 1
        now = time.time()
        self.tables.results[rec["id"]] = self.limits.fit_outcome(rec["id"], {
            "id": rec["id"], "service": rec["service"], "handler": rec["handler"], "key": rec["key"],
            "status": rec["status"], "result": rec.get("result"), "error": rec.get("error"),
            "code": rec.get("code"), "attempt": rec["attempt"], "created": rec["created"], "finished": now,
            "source": rec.get("source"),
            "journal": rec["journal"], "wake_at": None, "payload": rec.get("payload"),
        })
        self.tables.expiry[expiry_key(now, rec["id"])] = rec["id"]  # same apply: both reach the changelog
        del self.tables.invocations[rec["id"]]
        self.recent.pop(rec["id"], None)
        self._drop_timer(rec["id"])
        self.waiter_partition.pop(rec["id"], None)
        for fut in self.waiters.pop(rec["id"], []):
            if not fut.done():
                fut.set_result(rec)
        st = self.part(p)
        okey = object_key(rec["service"], rec["key"])
        if st.inflight.get(okey) == rec["id"]:
            del st.inflight[okey]
            self._dispatch_next(p, okey)

    def _dispatch_next(self, p: int, okey: str) -> None:
        """Start the next queued invocation of ``okey``, if any."""
        st = self.part(p)
        if not st.live:
            return
        queue = st.queues.get(okey)
        while queue:
            inv_id = queue.popleft()
            rec = self._record(inv_id)
            if rec is None or rec["status"] != "pending":
                continue
            st.inflight[okey] = inv_id
            self.actors.start(p, st.epoch, rec, self._state(okey))
            break
        if queue is not None and not queue:
            del st.queues[okey]

    def _fail_too_large(self, p: int, exc: RowTooLargeError) -> None:
        """A row of this invocation would be refused by its changelog: end it, failed, and move the key on.

        Nothing of the command that raised was written. The invocation keeps
        the last record that fit; its actor (if any) stops.
        """
        inv_id = exc.rec["id"]
        error = f"TooLargeError: {exc}"
        rec = self._record(inv_id)
        if rec is None:  # a new invocation whose record never fit: give _finish one to remove
            rec = {**exc.rec, "payload": None, "journal": []}
            self.tables.invocations[inv_id] = rec
        log.error("Invocation failed method=%s/%s invocationID=%s error=%s", rec["service"], rec["handler"],
                  inv_id, error)
        self.actors.cancel(inv_id)
        queue = self.part(p).queues.get(object_key(rec["service"], rec["key"]))
        if queue and inv_id in queue:
            queue.remove(inv_id)
        if self.on_dead_letter is not None:
            self.on_dead_letter({**rec, "payload": exc.rec.get("payload")}, error)
        rec.update(status="failed", error=error, code=500, result=None)
        self._finish(p, rec)
