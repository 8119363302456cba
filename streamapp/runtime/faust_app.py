"""The Faust app of a worker: its lifecycle hooks call into the runtime (``runtime/app.py``).

Start: the table dir is prepared (local tables dropped after an unclean stop),
the broker is waited for (a broker that refuses the credentials ends the
start), the replication factor of the topics to create is settled from the
cluster's size, Faust's clients bootstrap patiently, and the internal topic's
partition count is checked. Stop: actors first (a step that
ran still gets its journal entry out), then Faust (commit, flush), then the
delivery's and the ingest's own clients; after a clean shutdown the tables
are marked trustworthy for the next start.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import faust
from faust.sensors import Sensor

from streamapp.runtime import connection, faust_adapter, logformat, membership
from streamapp.runtime.startup import (
    check_partitions,
    mark_clean_stop,
    prepare_table_dir,
    replication_factor,
    wait_for_broker,
)

if TYPE_CHECKING:
    from streamapp.runtime.app import Runtime
    from streamapp.runtime.changelog import StagedRows
    from streamapp.runtime.faust_fetch_ids import FetchedIds

log = logging.getLogger(__name__)


class StreamApp(faust.App):
    """faust.App that lets the runtime add raw aiohttp routes."""

    def __init__(self, id: str, *, runtime: Runtime, **options: Any) -> None:
        # Component classes that differ from Faust's (runtime/faust_adapter.py says how and why).
        options.setdefault("PartitionAssignor", faust_adapter.PartitionAssignor)
        options.setdefault("TableManager", faust_adapter.TableManager)
        super().__init__(id, **options)
        self.runtime = runtime

    def ack_gate(self, message: Any) -> bool:
        """Consulted by the consumer before it counts an ack (``faust_adapter.Consumer.ack``)."""
        return self.runtime.delivery.ackable(message)

    @property
    def fetched_ids(self) -> FetchedIds:
        """Installed on the consumer's client (``faust_adapter.ConsumerThread``); read by the sources agent."""
        return self.runtime.ingest.fetched

    def take_staged(self) -> list[StagedRows]:
        """Called by the producer as a flush begins (``faust_adapter.Producer.flush``): the rows it sends first."""
        return self.runtime.tables.take_staged()

    def changelog_refused(self, topic: str, exc: BaseException) -> None:
        """The broker refused a batch of staged rows (``flush.send_rows``)."""
        self.runtime.changelog_guard.refused(topic, exc)

    def instance_fenced(self) -> None:
        """Another process joined with this worker's group.instance.id (``faust_fence.watch_fence``)."""
        membership.fenced(self.runtime)

    def on_webserver_init(self, web: Any) -> None:
        # Faust calls this more than once for the same aiohttp app.
        if getattr(web.web_app, "_streamapp_routes", False):
            return
        from streamapp.runtime import web as web_views

        web_views.install(web.web_app, self.runtime)
        web.web_app._streamapp_routes = True


    async def on_first_start(self) -> None:
        logformat.plain_when_not_a_terminal()  # the worker configured logging before starting the app
        if off := logformat.lighter_records():  # two lines per invocation: skip what none prints
            log.debug("Log records skip fields no handler prints switches=%s", ",".join(off))
        settings = self.runtime.settings
        prepare_table_dir(settings.table_dir)
        self.runtime.tables.positions.load(settings.table_dir)  # after a clean stop only: else dropped above
        await super().on_first_start()
        kafka = self.runtime.kafka
        log.info("Connecting to the cluster %s", connection.describe(settings))
        await wait_for_broker(settings, kafka, settings.broker_wait)
        # Faust's producer and consumer bootstrap after this returns; the
        # broker may be killed or restarting by then.
        faust_adapter.patient_bootstrap(settings.broker_wait)
        # Read by Faust when it declares each topic (after this returns); the
        # topics' min.insync.replicas follows it (faust_adapter.Transport).
        topic = self.runtime.internal.get_topic_name()
        replicas = self.conf.topic_replication_factor = await replication_factor(
            kafka, settings.replication_factor, topic)
        log.info("Topics this worker creates get replication_factor=%d%s", replicas,
                 "".join(f" {k}={v}" for k, v in connection.topic_config(replicas).items()))
        log.info("Group membership %s standby_replicas=%d", f"static instance_id={settings.instance_id}"
                 if settings.instance_id else "dynamic", settings.standby_replicas)
        await check_partitions(kafka, topic, settings.partitions)

    async def on_stop(self) -> None:
        # Stop the actors while the producer still runs, so a step that ran
        # gets its journal entry out; then Faust stops the consumer (commit),
        # flushes and stops the producer.
        await self.runtime.actors.stop()
        await super().on_stop()
        await self.runtime.delivery.close()
        await self.runtime.ingest.close()

    async def on_shutdown(self) -> None:
        # Children (tables, producer) are stopped by now: every table write
        # was flushed to its changelog, so the next start may trust the tables.
        await super().on_shutdown()
        self.runtime.tables.expiry.close()  # the expiry index's memtables to its files, before the mark
        self.runtime.tables.positions.save(self.runtime.settings.table_dir)
        mark_clean_stop(self.runtime.settings.table_dir)


class RebalanceSensor(Sensor):
    """Activates the partitions assigned here once a rebalance ends."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime

    def on_rebalance_end(self, app: Any, state: dict[str, Any]) -> None:
        self.runtime.activation = asyncio.ensure_future(self.runtime.activate_assigned())
