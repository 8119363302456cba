"""The worker's agents, tasks and timers, wired onto the Faust app of a ``Runtime``.

    invocations  reads ``{app}-invocations`` in log order and applies each
                 command to the tables (``Runtime.apply_command``): one
                 writer per partition
    sources      reads the source topics in batches, confirms which topic
                 incarnation they are from and makes each record durable as an
                 ``invoke`` command or a dead letter (``runtime/sources.py``)
    scheduler    fires due timers (``runtime/scheduler.py``)
    timers       outcome expiry, source-topic incarnations, and the 0.25 s
                 tick: stall watch, flow control, offset guards

Which offsets the agents may commit, and when, is ``runtime/delivery.py``'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faust.types import TP

from streamapp.durable import mute
from streamapp.runtime import faust_readers
from streamapp.runtime.expiry import EXPIRE_EVERY
from streamapp.runtime.faust_app import RebalanceSensor

if TYPE_CHECKING:
    from streamapp.runtime.app import Runtime


def wire(rt: Runtime) -> None:
    app = rt.app
    rt.app.sensors.add(RebalanceSensor(rt))
    rt.app.sensors.add(rt.changelog_guard)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        rt.ingest.fetched.forget(revoked)
        if rt.stalled:  # buffered writes sent after waking may have moved the offsets again
            rt.distrust_tables()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
        rt.on_assignment(assigned)
        await rt.ingest.on_assigned(assigned)  # source topic ids, before the records are fetched

    def paused() -> bool:  # the agents leave records aside on purpose: fenced, or a rebalance suspended the flow
        return rt.fenced() or not app.flow_control.is_active()

    guard = rt.delivery.guards["invocations"]
    source_guard = rt.delivery.guards["sources"]
    for each in (guard, source_guard):  # finds records lost on the way to the agent
        each.handed_over = lambda tp: faust_readers.handed_over(app.consumer, tp)
        each.paused = paused

    @app.agent(rt.internal, name="invocations")
    async def invocations(stream: Any) -> None:
        await rt.read_limits()  # no row is written before the size checks know the limits
        async for event in stream.events():
            msg = event.message
            if rt.fenced():  # not handled: never committed, read again once the group says who owns it
                faust_readers.mark_done(msg)  # (not dropped: the guard is not to seek back meanwhile)
                continue
            if await guard.admit(msg):
                reason = rt.apply_command(msg, event.value)
                if reason is not None:
                    await rt.outbox.dead_letter_command(msg, reason)
            elif msg.acked:
                continue  # dropped past a hole: read again after the seek
            rt.delivery.mark_handled(msg)  # applied now, or before this rebalance

    source_topics = [topic for topic, _ in rt.settings.subscriptions]
    # Declared so that a missing source topic is created (1 partition, as
    # the seed's compose file does) instead of silently never assigned.
    sources = app.topic(*source_topics, partitions=1, internal=True, key_serializer="raw", value_serializer="raw")
    rt.delivery.gate([rt.internal.get_topic_name()], "invocations")
    rt.delivery.gate(source_topics, "sources")

    @app.agent(sources, name="sources")
    async def sources_agent(stream: Any) -> None:
        queue = stream.channel.queue  # the stream buffer Faust delivers the source records to

        def buffer_full() -> bool:
            return bool(queue.full())

        async for events in faust_readers.take_ready(stream, 500, gather=0.005):
            source_guard.busy = True  # the records behind this batch wait for it
            durable = False
            admitted = []
            try:
                await rt.flow.admit(buffer_full)
                events = await rt.ingest.confirm(events)  # which topic incarnation the records are from
                for event in events:
                    if await source_guard.admit(event.message):
                        admitted.append(event)
                    elif not event.message.acked:
                        rt.delivery.mark_handled(event.message)  # made durable before this rebalance
                await rt.ingest.batch(admitted)
                durable = True
            finally:
                source_guard.busy = False
                if not durable:
                    # Not durable (cancelled, failed): read these again from the commit, not as replays.
                    source_guard.forget({event.message.tp for event in admitted})
            for event in admitted:
                rt.delivery.mark_handled(event.message)

    @app.task
    async def scheduler() -> None:
        mute.install()  # after the worker configured logging
        await rt.dead_letters.maybe_declare()
        await rt.scheduler.run()

    @app.timer(min(EXPIRE_EVERY, rt.settings.results_retention / 4))
    async def expire_results() -> None:
        await rt.expire_results()

    @app.timer(2.0)
    async def source_incarnations() -> None:
        await rt.ingest.watch()  # a recreated source topic, also when no record reveals it

    @app.timer(0.25)
    async def flow_control() -> None:
        rt.watch_stall()
        rt.flow.tick()
        await rt.delivery.tick()
