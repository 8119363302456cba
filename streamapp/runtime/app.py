"""Builds the Faust app: topics, tables, agents, rebalance hooks, web views.

Data flow:

    source topics ──sources agent──▶ {app}-invocations ──invocations agent──▶ tables
    (key = entity id)  (validate,     (key = Service/key,   (apply in log order,
                        repartition)   N partitions)          dispatch actors)
                                          ▲
             actors (journal entries, outcomes), scheduler (fire), HTTP, operators

The agents, tasks and timers are wired in ``runtime/agents.py``. The commit
protocol (what makes a record's offset committable, in which order) is
``runtime/delivery.py``'s; Faust and aiokafka internals are reached
only in ``runtime/faust_adapter.py``. A worker that finds it was frozen past
most of its session stops its actors and partitions until the group confirms
what it owns (``watch_stall``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from aiokafka.errors import KafkaError
from faust.types import TP

from streamapp.config import Settings
from streamapp.durable.service import Registry
from streamapp.runtime import agents, commands, connection, faust_adapter, faust_restore, limits, ops
from streamapp.runtime.ackapply import AckApply
from streamapp.runtime.actors import ActorPool
from streamapp.runtime.delivery import Delivery
from streamapp.runtime.engine import Engine
from streamapp.runtime.faust_app import StreamApp
from streamapp.runtime.flow import FlowControl
from streamapp.runtime.leadership import Leadership
from streamapp.runtime.metrics import Metrics
from streamapp.runtime.outbox import Outbox
from streamapp.runtime.scheduler import Scheduler
from streamapp.runtime.sources import Ingest
from streamapp.runtime.startup import advertised_url
from streamapp.runtime.store import Tables

log = logging.getLogger(__name__)

EX_SOFTWARE = 70  # exit status of a worker stopped because a command could not be applied


class Runtime:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        faust_adapter.check_versions()
        self.settings = settings
        self.registry = registry
        advertised = advertised_url(settings)
        # Every Kafka client of this worker connects with these (runtime/connection.py): one TLS context for all.
        tls = connection.ssl_context(settings)
        self.kafka = connection.client_options(settings, tls)
        self.app = StreamApp(
            settings.app_id,
            runtime=self,
            broker=faust_adapter.transport_url(self.kafka["bootstrap_servers"]),  # streamapp's transport
            broker_credentials=connection.faust_credentials(settings, tls),
            store=f"{faust_restore.STORE_SCHEME}://",  # Faust's RocksDB store, without a needless gc per rebalance
            datadir=str(settings.table_dir),  # per app id: two apps never share table files
            web_bind=settings.web_host,
            web_host=str(advertised.host),
            web_port=settings.web_port,
            canonical_url=str(advertised),  # what peers forward to (assignor metadata)
            topic_partitions=settings.partitions,
            topic_replication_factor=1,  # settled at start-up from the cluster (StreamApp.on_first_start)
            table_standby_replicas=settings.standby_replicas,  # runtime/membership.py
            consumer_group_instance_id=settings.instance_id,  # static membership, off unless set
            consumer_auto_offset_reset="earliest",
            autodiscover=False,
            processing_guarantee="at_least_once",
            producer_max_request_size=8 * 1024 * 1024,
            consumer_max_fetch_size=4 * 1024 * 1024,
            # Small fetch batches: a batch never overfills a stream buffer, so
            # Faust's buffer flow control never blocks the shared consumer loop.
            broker_max_poll_records=500,
            # A topic created at start-up may be missing from the first assignment
            # (metadata not propagated yet); refreshing metadata often makes the
            # consumer notice it and rebalance within seconds, not minutes.
            consumer_metadata_max_age_ms=5000,
            worker_redirect_stdouts=False,
            # Many small records (commands, changelog entries) from many actors:
            # lingering a moment lets one produce request carry many of them.
            producer_linger=settings.producer_linger,
            # A worker killed without leaving the group holds its partitions
            # until its session expires: keep that short so they move quickly.
            broker_session_timeout=settings.session_timeout,
            broker_heartbeat_interval=max(0.5, settings.session_timeout / 10),
        )
        self.internal = self.app.topic(f"{settings.app_id}-invocations", partitions=settings.partitions,
                                       internal=True, key_serializer="raw", value_serializer="raw")
        self.dead_letters = self.app.topic(settings.dead_letter_topic, partitions=1, internal=True,
                                           key_serializer="raw", value_serializer="raw")
        self.tables = Tables(self.app, settings.partitions)
        self.metrics = Metrics().attach(self)  # GET /metrics: the components count, the rest is read when scraped
        self.outbox = Outbox(self.app, self.internal, self.dead_letters, settings.partitions, self.metrics)
        self.scheduler = Scheduler(self.outbox.fire, self.metrics.lateness.observe)
        # A heartbeat may be up to one interval old when the process freezes.
        leadership = Leadership(stall_limit=settings.session_timeout * 0.8)
        self.actors = ActorPool(registry, self.outbox.send, self.outbox.invoke, self.outbox.dead_letter_invocation,
                                settings.max_running, leadership, self.metrics)
        self.actors.enqueue = self.outbox.enqueue  # steps pipelined by one (runtime/step_sink.py)
        self.engine = Engine(self.tables, self.actors, self.scheduler, leadership, metrics=self.metrics,
                             on_dead_letter=self.outbox.dead_letter_soon, on_foreign_activation=self.reclaim)
        self.flow = FlowControl(self.engine, lambda tp: self.app.consumer.highwater(tp), self.internal.get_topic_name,
                                self.outbox.written, settings.max_pending, self.outbox.extra)
        self.expire_turn = 0  # which live partition gets the first expire command of the next round
        self.recovering: asyncio.Future[None] | None = None
        self.stalled = False  # woke from a stall; no command is applied until the group reassigns
        self.fenced_out = False  # another process took this worker's instance id (runtime/membership.py)
        self.ingest = Ingest(self)
        self.activation: asyncio.Future[None] | None = None
        self.reclaiming: asyncio.Future[None] | None = None
        self.delivery = Delivery(self.app, self.kafka)
        self.ack_apply = AckApply(self, self.drives)
        self.outbox.on_durable = self.ack_apply.on_durable
        self.generation: int | None = None  # the consumer generation of the last assignment
        self._reading_limits = asyncio.Lock()
        self.changelog_guard = limits.ChangelogGuard(self.changelog_topics)
        agents.wire(self)  # the agents, tasks and timers (runtime/agents.py)

    async def read_limits(self) -> limits.Limits:
        """The broker's record limits for the internal topic and the changelogs, asked once."""
        async with self._reading_limits:
            delay = 1.0
            while self.outbox.limits is None:
                topics = {"command": self.internal.get_topic_name()}
                for name in ("invocations", "results", "state"):
                    topics[name] = getattr(self.tables, name).changelog_topic.get_topic_name()
                try:
                    found = await asyncio.wait_for(
                        limits.read(await self.delivery.admin(), topics, self.app.conf.producer_max_request_size), 30)
                except (KafkaError, OSError, LookupError) as exc:  # OSError covers TimeoutError
                    log.warning("Could not read the broker's record limits, retrying in=%.0fs error=%r", delay, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                self.outbox.limits = self.engine.limits = self.actors.limits = found
                log.info("Record limits command=%d rows=%s", found.command, dict(found.rows))
            return self.outbox.limits

    def on_assignment(self, assigned: set[TP]) -> None:
        """Drop what belonged to partitions that moved (or may have moved) away.

        Faust revokes everything on each rebalance (eager protocol) and then
        assigns; partitions missing from the new assignment moved away. When
        the generation skipped numbers, this worker was out of the group for a
        while (paused, expelled) and any partition may have had another owner
        meanwhile: treat them all as lost, and activate them afresh.
        """
        generation = self.app.consumer_generation_id
        skipped = self.stalled or (self.generation is not None and generation != self.generation + 1)
        self.stalled = False  # the group has spoken: the fence ends with this assignment
        self.generation = generation
        self.metrics.rebalances += 1
        topic = self.internal.get_topic_name()
        kept = set() if skipped else {tp.partition for tp in assigned if tp.topic == topic}
        if skipped:
            log.warning("Rebalance skipped generations (now %s): restarting every partition", generation)
        self.delivery.forget(None if skipped else assigned)
        self.ack_apply.forget()
        self.engine.release(self.engine.known_partitions() - kept)

    # -- rebalance -------------------------------------------------------------
    def reclaim(self, p: int) -> None:
        """Another worker activated a partition this worker was driving: claim it back if still assigned."""
        if p in self.assigned_partitions():
            log.warning("Partition taken over while this worker drove it; reactivating partition=%s", p)
            self.reclaiming = asyncio.ensure_future(self.activate([p]))

    def assigned_partitions(self) -> set[int]:
        topic = self.internal.get_topic_name()
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic}

    async def activate_assigned(self) -> None:
        """Ask to drive every assigned internal partition not driven yet.

        Partitions kept through a rebalance stay live: their actors never
        stopped, so they keep their epoch.
        """
        await self.activate(sorted(self.assigned_partitions() - self.engine.live_partitions()))

    async def activate(self, assigned: list[int]) -> None:
        for p in assigned:
            token = f"{uuid.uuid4().hex[:12]}"
            self.engine.expect_activation(p, token)
            await self.outbox.send(p, f"activate/{p}", {"op": "activate", "epoch": token, "at": time.time()})
        log.info("Requested activation of partitions=%s", assigned)

    def watch_stall(self) -> None:
        """Called every tick (and before applying a command): after a stall, stop until the group reassigns.

        A process frozen (SIGSTOP, a VM pause) past its session wakes up with
        actors mid-handler while another worker may already drive its
        partitions, and with tables that lack what that worker wrote (they are
        restored from the changelogs only on a rebalance). So from the moment
        it wakes, nothing this worker believes about ownership counts:
          1. ``Engine.owns`` refuses every actor's next step (it sees the gap);
          2. the invocations agent applies no command (``fenced``): records
             read meanwhile are not handled, so never committed here;
          3. every partition is released (actors, timers, applied offsets) and
             the offset guards forget where they were;
          4. the worker asks the group for a new assignment (a rejoin), and
             asks again every session timeout until one arrives.
        The assignment ends the fence (``on_assignment``); Faust restores the
        tables from the changelogs, the agents read on from the group's
        commits, and what is assigned is activated afresh. Ownership is
        never resumed on this worker's own say-so.
        """
        now, last = time.monotonic(), self.engine.alive_at
        self.engine.alive_at = now
        if last is None or now - last <= self.engine.stall_limit:
            return
        self.delivery.forget()  # others may have read on meanwhile: start again from the group's commits
        self.ack_apply.forget()
        live = self.engine.live_partitions()
        log.warning("Worker stalled for %.1fs (limit %.1fs): stopping partitions=%s until the group reassigns them",
                    now - last, self.engine.stall_limit, sorted(live))
        self.stalled = True
        self.metrics.stalls += 1
        self.engine.release(self.engine.known_partitions())
        self.distrust_tables()
        if self.recovering is None or self.recovering.done():
            self.recovering = asyncio.ensure_future(self._rejoin_after_stall())

    def distrust_tables(self) -> None:
        """After a stall the local tables may lack what another worker wrote: restore them in full."""
        try:
            reset = self.tables.distrust_local()
        except Exception as exc:  # a store not open yet has nothing to distrust
            log.warning("Could not reset table offsets after the stall error=%r", exc)
            return
        log.warning("Tables will be restored from the start of their changelogs partitions=%d", len(reset))

    def fenced(self) -> bool:
        """Whether the worker must not apply commands: it woke from a stall and was not reassigned since."""
        alive_at = self.engine.alive_at
        if not self.stalled and alive_at is not None and time.monotonic() - alive_at > self.engine.stall_limit:
            self.watch_stall()  # woke with commands buffered: the tick has not run yet
        return self.stalled

    async def _rejoin_after_stall(self) -> None:
        while self.stalled:
            if faust_adapter.request_rejoin(self.app.consumer):
                log.info("Asked the group for a new assignment after the stall")
            await asyncio.sleep(self.settings.session_timeout)

    def changelog_topics(self) -> set[str]:
        return {getattr(self.tables, name).changelog_topic.get_topic_name()
                for name in ("invocations", "results", "timers", "state", "meta")}

    def ready(self) -> bool:
        """True once this worker drives every partition it was assigned."""
        if self.app.rebalancing or self.activation is None or not self.activation.done():
            return False
        changelog = self.tables.invocations.changelog_topic.get_topic_name()
        given = self.app.assignor.table_metadata(changelog)
        if not any(parts.get(changelog) for parts in given.values()):
            return False  # the group has not assigned the internal topic yet (created moments ago)
        # What the group gave this worker, as the assignor says and as the consumer holds: a
        # topic created moments ago can be in the first and missing from the second until
        # the next rebalance, and this worker answers for those partitions (owner lookups).
        me = str(self.app.conf.canonical_url).rstrip("/")
        mine = {p for url, parts in given.items() if str(url).rstrip("/") == me for p in parts.get(changelog, ())}
        return (mine | self.assigned_partitions()) <= self.engine.live_partitions()

    async def expire_results(self) -> None:
        """Ask each partition this worker drives to drop outcomes past the retention.

        A command, not a direct delete: only the invocations agent writes the
        tables. A redelivered source record or a repeated idempotency key older
        than the retention runs again, as in Restate once its retention passed.
        Each command does bounded work (``expiry.EXPIRE_MAX`` outcomes, oldest
        first; ``EXPIRE_RATE`` a second per worker); sent every ``EXPIRE_EVERY``
        seconds, they outpace the finishes.
        """
        before = time.time() - self.settings.results_retention
        live = [p for p in sorted(self.engine.live_partitions()) if self.engine.expiry_due(p, before)]
        self.expire_turn += 1
        first = self.expire_turn % len(live) if live else 0  # the worker's budget goes first come first served
        await asyncio.gather(*(self.outbox.send(p, f"expire/{p}", {"op": "expire", "before": before})
                               for p in live[first:] + live[:first]))

    def apply_command(self, msg: Any, value: bytes) -> str | None:
        """Apply one internal record (one command or a batch of them); why it cannot be applied, if so.

        A command that is well formed but fails to apply stops the worker
        (fail-stop): its offset is never committed (the record is not marked
        handled), so the next owner of the partition applies it again.
        Skipping it would lose an ``invoke`` or strand a key behind a lost
        ``complete``, with rows half written. A malformed command of a batch
        is skipped (the record is dead-lettered with the reason) and the
        others are applied.
        """
        cmds, reasons = commands.parse_record(value)
        self.apply_parsed(msg.partition, msg.offset, cmds)
        return "; ".join(reasons) or None

    def apply_parsed(self, p: int, offset: int, cmds: list[tuple[int, ops.Command]]) -> None:
        for index, command in cmds:
            try:
                self.engine.apply(p, offset, command, index)
            except Exception as exc:  # ApplyError, or a failure while failing an invocation
                log.critical("Stopping the worker: could not apply %s", exc, exc_info=exc.__cause__ or exc)
                raise SystemExit(EX_SOFTWARE) from exc

    def drives(self, p: int) -> bool:
        """Whether this worker may apply its own command for ``p`` at its ack (``runtime/ackapply.py``)."""
        return (self.outbox.limits is not None and not self.fenced() and not self.fenced_out
                and not self.app.rebalancing and self.app.flow_control.is_active()
                and p in self.engine.leading)
