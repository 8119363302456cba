"""What the HTTP layer may ask of the runtime: ``Ingress``, and its implementation over ``Runtime``.

The web views (``runtime/web.py``) see only this interface: invoke, wait for
a result, read state, look invocations up, operate on them, find a key's
owner. ``RuntimeIngress`` is the one place that knows where those answers
live in the runtime (engine, tables, the Faust app's assignor), so the views
can be served over any implementation (a fake in a test, another runtime).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from streamapp.config import Settings
from streamapp.durable.errors import StreamAppError
from streamapp.durable.service import Handler, Registry
from streamapp.runtime import commands
from streamapp.runtime.store import Tables

if TYPE_CHECKING:
    from streamapp.runtime.app import Runtime

Record = dict[str, Any]  # an invocation record as the tables hold it


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
    def driven(self) -> set[int]:
        """The partitions this worker drives (their tables are complete here)."""
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
    def unfinished(self) -> list[tuple[Record, bool]]:
        """Every unfinished invocation held here, with whether it runs now."""
    async def operate(self, service: str, key: str, inv_id: str, action: str) -> None:
        """Make an operator action (resume, kill) durable for the invocation's key."""
    def health(self) -> dict[str, Any]: ...


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

    def driven(self) -> set[int]:
        return set(self.rt.engine.live_partitions())

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
        # Only a driven partition's rows are an answer: a standby replica's copy
        # (STREAMAPP_STANDBY_REPLICAS) of another worker's partition may be behind.
        if rec is None or self._partition(commands.object_key(rec["service"], rec["key"])) \
                not in self.rt.engine.live_partitions():
            return None
        return rec, self.rt.engine.is_running(inv_id)

    def unfinished(self) -> list[tuple[Record, bool]]:
        engine = self.rt.engine
        running = engine.running_ids()
        return [(rec, inv_id in running)
                for p in sorted(engine.live_partitions())
                for inv_id, rec in Tables.partition_items(self.rt.tables.invocations, p)]

    async def operate(self, service: str, key: str, inv_id: str, action: str) -> None:
        okey = commands.object_key(service, key)
        await self.rt.outbox.send(self._partition(okey), okey, {"op": action, "id": inv_id})

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
            **engine.finished,
        }
