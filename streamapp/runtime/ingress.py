"""What the HTTP layer may ask of the runtime: ``Ingress``, and its implementation over ``Runtime``.

The web views (``runtime/web.py``) see only this interface: invoke, wait for
a result, read state, look invocations up, operate on them, find a key's
owner. ``RuntimeIngress`` is the one place that knows where those answers
live in the runtime (engine, tables, the Faust app's assignor), so the views
can be served over any implementation (a fake in a test, another runtime).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from faust.types import TP

from streamapp.config import Settings
from streamapp.durable.errors import StreamAppError
from streamapp.durable.service import Handler, Registry
from streamapp.runtime import commands, deadletters, metrics
from streamapp.runtime.partition_state import SUMMARY

if TYPE_CHECKING:
    from streamapp.runtime.app import Runtime

log = logging.getLogger(__name__)

Record = dict[str, Any]  # an invocation record as the tables hold it
CATCH_UP_WAIT = 2.0  # how long a lookup waits for this worker to apply what its partitions' logs hold
CATCH_UP_POLL = 0.01


class NotDrivenError(StreamAppError):
    """The key's partition has no worker driving it here yet (unowned, or starting): retry."""

    retriable = True

    def __init__(self, partition: int, starting: bool) -> None:
        what = "is starting on this worker" if starting else "has no owner yet"
        super().__init__(f"partition {partition} {what}; retry")
        self.partition = partition
        self.starting = starting


class Ingress(Protocol):
    """The runtime as the HTTP layer sees it."""

    settings: Settings
    registry: Registry

    def handler(self, service: str, name: str) -> Handler | None: ...
    def owner(self, okey: str) -> str | None:
        """Base URL of the worker owning ``okey``, None when this one drives it; NotDrivenError if nobody
        drives it yet (unowned, or assigned here and still starting)."""
    def peers(self) -> list[str]:
        """The other workers' base URLs."""
    async def invoke(self, target: dict[str, Any], source: Any) -> None:
        """Make an invocation durable in its key's inbox (MessageSizeTooLargeError when too large)."""
    def wait(self, inv_id: str, okey: str) -> asyncio.Future[Record]:
        """A future for the invocation's outcome; NotDrivenError if its partition is not driven here."""
    def stop_waiting(self, inv_id: str, fut: asyncio.Future[Record]) -> None: ...
    def accepted(self, inv_id: str) -> bool:
        """Whether the invocation is in its key's inbox (not finished)."""
    def outcome(self, inv_id: str) -> Record | None:
        """The finished invocation's record, kept for the results retention."""
    def state(self, okey: str) -> dict[str, Any]: ...
    def lookup(self, inv_id: str) -> tuple[Record, bool] | None:
        """The invocation held here (unfinished or finished) and whether it runs now."""
    async def caught_up(self) -> set[int]:
        """The partitions driven here that applied every command written to them before the call (waiting up
        to ``CATCH_UP_WAIT`` for those behind): only their tables can say an invocation is unknown."""
    def unfinished(self) -> list[tuple[Record, bool]]:
        """Every unfinished invocation held here, with whether it runs now: the fields a list shows
        (``partition_state.SUMMARY``; ``lookup`` reads the whole row)."""
    async def operate(self, service: str, key: str, inv_id: str, action: str) -> None:
        """Make an operator action (resume, kill, cancel, purge) durable for the invocation's key."""
    async def dead_letters(self, filters: deadletters.Filters, limit: int) -> tuple[list[deadletters.Letter], bool]:
        """The dead letters the filters match (at most ``limit``), and whether there were more."""
    async def replay(self, letters: list[deadletters.Letter]) -> tuple[list[str], list[dict[str, Any]]]:
        """Replay dead letters into their handlers: the invocation ids, and the letters skipped with why."""
    def health(self) -> dict[str, Any]: ...
    def liveness(self) -> dict[str, Any]:
        """``{"live": bool, ...}``: the event loop turns and the stall watchdog has not fenced the worker."""
    def readiness(self) -> dict[str, Any]:
        """``{"ready": bool, ...}``: the worker drives every partition it was assigned."""
    def metrics(self) -> bytes:
        """The Prometheus text exposition of this worker's metrics."""
    def top_keys(self, n: int) -> list[dict[str, Any]]:
        """The ``n`` keys with the longest queues in the partitions led here."""


class RuntimeIngress:
    """``Ingress`` over a ``Runtime``: thin, each answer delegated to what the runtime has."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.settings: Settings = runtime.settings
        self.registry: Registry = runtime.registry

    def handler(self, service: str, name: str) -> Handler | None:
        return self.registry.lookup(service, name)

    def _partition(self, okey: str) -> int:
        return commands.partition_for(okey, self.settings.partitions)

    def _me(self) -> str:
        return str(self.rt.app.conf.canonical_url).rstrip("/")

    def owner(self, okey: str) -> str | None:
        p = self._partition(okey)
        if p in self.rt.engine.live_partitions():
            return None
        changelog = self.rt.tables.invocations.changelog_topic.get_topic_name()
        for url, topics in self.rt.app.assignor.table_metadata(changelog).items():
            if p in topics.get(changelog, ()):
                base = str(url).rstrip("/")
                if base == self._me():
                    # Assigned here, not driven yet: its tables may still be restoring.
                    raise NotDrivenError(p, starting=True)
                return base
        raise NotDrivenError(p, starting=False)

    def peers(self) -> list[str]:
        urls = {str(url).rstrip("/") for url in self.rt.app.assignor.tables_metadata()}
        return sorted(urls - {self._me()})

    async def invoke(self, target: dict[str, Any], source: Any) -> None:
        await self.rt.outbox.invoke(target, source=source)

    def wait(self, inv_id: str, okey: str) -> asyncio.Future[Record]:
        p = self._partition(okey)
        if p not in self.rt.engine.live_partitions():
            # Assigned here but not driven yet: a waiter now could outlive the
            # partition (it is released only with the partitions this worker drove).
            raise NotDrivenError(p, starting=True)
        return self.rt.engine.add_waiter(inv_id, p)

    def stop_waiting(self, inv_id: str, fut: asyncio.Future[Record]) -> None:
        self.rt.engine.remove_waiter(inv_id, fut)

    def accepted(self, inv_id: str) -> bool:
        return self.rt.tables.invocations.get(inv_id) is not None

    def outcome(self, inv_id: str) -> Record | None:
        rec: Record | None = self.rt.tables.results.get(inv_id)
        return rec

    def state(self, okey: str) -> dict[str, Any]:
        return dict(self.rt.tables.state.get(okey) or {})

    def lookup(self, inv_id: str) -> tuple[Record, bool] | None:
        rec = self.rt.tables.invocations.get(inv_id) or self.rt.tables.results.get(inv_id)
        if rec is not None and rec.get("purged"):
            return None  # an operator purged it: only a marker that deduplicates its id is left
        # Only a driven partition's rows are an answer: a standby replica's copy
        # (STREAMAPP_STANDBY_REPLICAS) of another worker's partition may be behind.
        if rec is None or self._partition(commands.object_key(rec["service"], rec["key"])) \
                not in self.rt.engine.live_partitions():
            return None
        return rec, self.rt.engine.is_running(inv_id)

    async def caught_up(self) -> set[int]:
        live = self.rt.engine.live_partitions()
        if not live:
            return set()
        topic = self.rt.internal.get_topic_name()
        try:  # where each partition's log ends now: the commands written before this call lie below
            ends = await asyncio.wait_for(self.rt.app.consumer.highwaters(*(TP(topic, p) for p in live)),
                                          CATCH_UP_WAIT)
        except Exception as exc:  # the broker could not say: no partition is known to be caught up
            log.warning("Could not read the internal topic's end offsets error=%r", exc)
            return set()
        end = {tp.partition: offset for tp, offset in ends.items()}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP_WAIT
        while True:
            behind = {p for p in live if self._done_below(topic, p) < end.get(p, 1 << 62)}
            if not behind or loop.time() >= deadline:
                return (live & self.rt.engine.live_partitions()) - behind
            await asyncio.sleep(CATCH_UP_POLL)

    def _done_below(self, topic: str, p: int) -> int:
        """The offset below which partition ``p``'s records were all handled here (applied, or dead-lettered)."""
        st = self.rt.engine.partitions.get(p)
        applied = -1 if st is None else st.applied
        expected = self.rt.delivery.guards["invocations"].next.get(TP(topic, p), 0)  # admitted (or taken) up to it
        return max(applied + 1, expected)

    def unfinished(self) -> list[tuple[Record, bool]]:
        engine = self.rt.engine
        running = engine.running_ids()
        return [({"id": inv_id, **dict(zip(SUMMARY, summary, strict=True))}, inv_id in running)
                for p in sorted(engine.live_partitions())
                for inv_id, summary in engine.part(p).summary.items()]

    async def operate(self, service: str, key: str, inv_id: str, action: str) -> None:
        okey = commands.object_key(service, key)
        await self.rt.outbox.send(self._partition(okey), okey, {"op": action, "id": inv_id})

    async def dead_letters(self, filters: deadletters.Filters, limit: int) -> tuple[list[deadletters.Letter], bool]:
        return await deadletters.read(self.rt.kafka, self.settings.dead_letter_topic, filters, limit)

    async def replay(self, letters: list[deadletters.Letter]) -> tuple[list[str], list[dict[str, Any]]]:
        return await deadletters.replay(self.rt, letters)

    def health(self) -> dict[str, Any]:
        rt, engine = self.rt, self.rt.engine
        return {
            "ready": rt.ready(),
            "live_partitions": sorted(engine.live_partitions()),
            "running": rt.actors.running(),
            "pending": engine.pending_count(),
            "backlog": rt.flow.backlog(),
            "sleeping": rt.scheduler.total(),
            "waiters": sum(len(futs) for futs in engine.waiters.values()),  # HTTP calls awaiting a result
            "applied_at_ack": rt.ack_apply.applied,  # command records applied before being read back
            **engine.finished,
        }

    def liveness(self) -> dict[str, Any]:
        rt = self.rt
        alive_at, limit = rt.engine.alive_at, rt.engine.stall_limit
        idle = None if alive_at is None else round(time.monotonic() - alive_at, 3)  # None: no tick yet
        if rt.stalled:
            return {"live": False, "tick_age": idle,
                    "reason": "fenced by the stall watchdog until the group reassigns its partitions"}
        if idle is not None and idle > limit:  # the watchdog's own tick is late: loop blocked, or the tick died
            return {"live": False, "tick_age": idle, "reason": f"the watchdog tick is late (limit {limit:.1f}s)"}
        return {"live": True, "tick_age": idle}

    def readiness(self) -> dict[str, Any]:
        rt = self.rt
        return {"ready": not rt.stalled and rt.ready(), "live_partitions": sorted(rt.engine.live_partitions())}

    def metrics(self) -> bytes:
        return self.rt.metrics.render()

    def top_keys(self, n: int) -> list[dict[str, Any]]:
        return metrics.top_keys(self.rt, n)
