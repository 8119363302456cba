"""The engine: the partition state machine of each partition, and the leadership that executes its actions.

The invocations agent hands each command to ``Engine.apply``, which applies
it (``partition.apply``: rows written, actions returned) and executes the
actions (``actions.py`` says which ones only a leader runs). Leadership is
the engine's to take and give up (``runtime/leadership.py`` holds it, shared
with the actor pool); the state machine knows nothing of it:

    live    this worker leads a partition from its own ``activate`` command
            (the token it sent, ``expect_activation``) until the partition is
            released, or another worker's activation is applied;
    owns    an actor started under an epoch may still act (``Leadership.owns``).

Another worker's activation applied while this worker leads the partition
means it lost the partition without noticing (paused past its session,
expelled and re-admitted): its actors stop at once, and the runtime claims
the partition again if Kafka still assigns it here (``on_foreign_activation``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streamapp.runtime import expiry, ops
from streamapp.runtime.actions import (
    Action,
    Activated,
    ArmTimer,
    CancelActor,
    DeadLetter,
    EntryDecided,
    Finished,
    StartActor,
    StopAfterStep,
)
from streamapp.runtime.commands import object_key
from streamapp.runtime.leadership import Leadership
from streamapp.runtime.limits import Limits
from streamapp.runtime.metrics import Metrics
from streamapp.runtime.partition import apply
from streamapp.runtime.partition_state import ApplyError, PartitionState, Shared
from streamapp.runtime.store import PartitionStore

if TYPE_CHECKING:
    from streamapp.runtime.actors import ActorPool
    from streamapp.runtime.scheduler import Scheduler

__all__ = ["ApplyError", "Engine", "PartitionState"]

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, tables: PartitionStore, actors: ActorPool, scheduler: Scheduler,
                 leadership: Leadership | None = None, *,
                 on_dead_letter: Callable[[dict[str, Any], str], None] | None = None,
                 on_foreign_activation: Callable[[int], None] | None = None,
                 metrics: Metrics | None = None) -> None:
        """``on_dead_letter(rec, error)``: an invocation failed for good; ``on_foreign_activation(p)``: another
        worker's activation of a partition this worker led was applied (it lost the partition unawares)."""
        self.tables = tables
        self.actors = actors
        self.scheduler = scheduler
        self.lead = leadership if leadership is not None else Leadership()
        self.shared = Shared(tables)
        self.partitions: dict[int, PartitionState] = {}  # the state machine of each partition applied here
        self.waiters: dict[str, list[Any]] = {}  # invocation id -> futures awaiting completion
        self.waiter_partition: dict[str, int] = {}
        self.finished = {"completed": 0, "failed": 0}  # applied by this worker since it started
        self.applied_total: Counter[int] = Counter()  # commands applied per partition (GET /metrics)
        self.metrics = metrics if metrics is not None else Metrics()
        self.on_foreign_activation = on_foreign_activation
        self.on_dead_letter = on_dead_letter

    # -- leadership (runtime/leadership.py) ---------------------------------
    @property
    def leading(self) -> dict[int, str]:
        """Partition -> the epoch this worker leads it under."""
        return self.lead.leading

    @property
    def my_tokens(self) -> dict[int, str]:
        return self.lead.my_tokens

    @property
    def alive_at(self) -> float | None:
        return self.lead.alive_at

    @alive_at.setter
    def alive_at(self, value: float | None) -> None:
        self.lead.alive_at = value

    @property
    def stall_limit(self) -> float:
        return self.lead.stall_limit

    @stall_limit.setter
    def stall_limit(self, value: float) -> None:
        self.lead.stall_limit = value

    def owns(self, p: int, epoch: str) -> bool:
        return self.lead.owns(p, epoch)

    def expect_entry(self, inv_id: str, index: int) -> asyncio.Future[bool]:
        return self.lead.expect_entry(inv_id, index)

    def forget_entry(self, inv_id: str, index: int) -> None:
        self.lead.forget_entry(inv_id, index)

    @property
    def limits(self) -> Limits:
        """The broker's record limits (runtime/limits.py), set before the first apply."""
        return self.shared.limits

    @limits.setter
    def limits(self, value: Limits) -> None:
        self.shared.limits = value

    @property
    def applied(self) -> dict[int, int]:
        """Highest offset applied per partition, by this process."""
        return {p: st.applied for p, st in self.partitions.items() if st.applied >= 0}

    # -- partition lifecycle ---------------------------------------------
    def part(self, p: int) -> PartitionState:
        st = self.partitions.get(p)
        if st is None:
            st = self.partitions[p] = PartitionState(p, self.shared)
        return st

    def expect_activation(self, p: int, token: str) -> None:
        self.my_tokens[p] = token

    def stop_partitions(self, lost: set[int]) -> None:
        """Stop leading ``lost``: their actors and timers stop, HTTP calls waiting on them are told."""
        if not lost:
            return
        self.actors.cancel_partitions(lost)
        self.scheduler.drop_partitions(lost)
        self.shared.recent.clear()  # another worker writes those records now
        for p in lost:
            self.leading.pop(p, None)
            self.my_tokens.pop(p, None)
        for inv_id in [i for i, p in self.waiter_partition.items() if p in lost]:
            del self.waiter_partition[inv_id]
            for fut in self.waiters.pop(inv_id, []):
                if not fut.done():
                    fut.set_result({"moved": True})

    def release(self, lost: set[int]) -> None:
        """Partitions that moved away: stop them and forget their state machines (and how far they were read)."""
        self.stop_partitions(lost)
        for p in lost:
            self.partitions.pop(p, None)

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

    def running_ids(self) -> set[str]:
        """Invocations in flight (running, sleeping, retrying or paused) in the partitions this worker leads."""
        return {i for p in self.leading if (st := self.partitions.get(p)) for i in st.inflight.values()}

    def is_running(self, inv_id: str) -> bool:
        return inv_id in self.running_ids()

    def known_partitions(self) -> set[int]:
        """Partitions this worker applies commands of, or leads."""
        return set(self.partitions) | set(self.leading)

    def live_partitions(self) -> set[int]:
        return set(self.leading)

    def pending_count(self) -> int:
        queued = sum(st.queued() for p in self.leading if (st := self.partitions.get(p)))
        return queued + self.actors.waiting()

    def expiry_due(self, p: int, before: float) -> bool:
        return expiry.due(self.part(p), before)

    # -- apply and execute ---------------------------------------------------
    def apply(self, p: int, offset: int, cmd: ops.Command, index: int = 0) -> None:
        """Apply command ``index`` of the record at ``offset`` of partition ``p`` and execute its actions.

        Raises ``ApplyError`` when applying failed (nothing is executed then).
        """
        actions = apply(self.part(p), offset, cmd, index)
        self.applied_total[p] += 1
        if actions:
            self.execute(p, actions)

    def execute(self, p: int, actions: list[Action]) -> None:
        """Run what applying asked for, in order; what only a leader may run, only if this worker leads."""
        activated: Activated | None = None
        for action in actions:
            match action:
                case StartActor(p=ap, epoch=epoch, rec=rec):
                    if epoch is not None and self.leading.get(ap) == epoch:
                        state = self.tables.state.get(object_key(rec["service"], rec["key"]))
                        self.actors.start(ap, epoch, rec, dict(state or {}))
                case ArmTimer(p=ap, epoch=epoch, id=inv_id, wake_at=wake_at):
                    if epoch is not None and self.leading.get(ap) == epoch:
                        self.scheduler.add(ap, epoch, inv_id, wake_at)
                case Finished(rec=rec):
                    self.finished[rec["status"]] += 1
                    self.metrics.finished(rec)
                    self.waiter_partition.pop(rec["id"], None)
                    for fut in self.waiters.pop(rec["id"], []):
                        if not fut.done():
                            fut.set_result(rec)
                case EntryDecided(id=inv_id, index=index, applied=applied):
                    self.lead.entry_decided(inv_id, index, applied)
                case CancelActor(id=inv_id):
                    self.actors.cancel(inv_id)
                case StopAfterStep(id=inv_id):
                    self.actors.stop_after_step(inv_id)
                case DeadLetter(rec=rec, error=error):
                    if self.on_dead_letter is not None:
                        self.on_dead_letter(rec, error)
                case Activated():
                    if self._take_lead(action):
                        activated = action
        if activated is not None:
            log.info("Partition activated partition=%s unfinished=%d resumed=%d sleeping=%d",
                     p, activated.unfinished, activated.resumed, self.scheduler.count(p))

    def _take_lead(self, action: Activated) -> bool:
        """Lead the partition if the activation is this worker's; stop leading it if another's. Whether it leads."""
        p = action.p
        if self.my_tokens.get(p) == action.epoch:
            if p in self.leading:  # led here under an earlier epoch of this worker's: its actors and timers stop
                self.actors.cancel_partitions({p})
                self.scheduler.drop_partitions({p})
            self.leading[p] = action.epoch
            self.metrics.activations += 1
            return True
        # Another worker's (or an earlier life's) activation. Still catching up:
        # this worker's own activation comes later in the log.
        if p in self.leading:
            self.stop_partitions({p})
            if self.on_foreign_activation is not None:
                self.on_foreign_activation(p)
        return False
