"""Faust and aiokafka internals, reached through Faust's transport registry (with ``faust_fence``,
``faust_readers``, ``faust_pacing``, ``faust_restore``, ``faust_drain`` and ``faust_fetch_ids``: the seven
``faust_*`` modules hold every use of them, checked against ``TESTED``).

Faust picks its transport by the scheme of the broker URL, from a plugin
registry (``faust.transport.drivers.TRANSPORTS``: ``kafka`` is its aiokafka
driver). This module registers the scheme ``streamapp`` for ``Transport``, a
subclass of that driver, and the runtime hands Faust its broker list with
that scheme (``transport_url``). Nothing is replaced process-wide: a plain
``faust.App`` in the same process keeps Faust's own classes.

What the subclasses change, and why:

``Consumer.ack`` — the ack gate. Faust's stream skips a record that arrives
while flow is suspended (a rebalance is starting) or that was fetched under
an older consumer generation, and acks it all the same; the record then
counts as processed and the next commit can pass it although no agent saw it
(chaos runs lost invocations this way). The consumer asks the app's
``ack_gate(message)`` first: a refused record is done with for this delivery
(rebalances do not wait for it) but its offset never becomes committable; it
is read again from the committed offset.

``Consumer._drain_messages`` — Faust's delivery loop, without the four
tasks it made for each record (``faust_drain``).

``ConsumerThread`` — fetch wait. Faust builds its aiokafka consumer with
``fetch_max_wait_ms=1500``; aiokafka keeps one fetch in flight per broker and
leaves out partitions that still hold fetched records, so data arriving
meanwhile for those waits up to the full wait. Commands make round trips
through the internal topic (actor -> log -> agent) on every step: a short
wait (``FETCH_MAX_WAIT_MS``) keeps a step's round trip in milliseconds. At
rest that short wait would poll the broker a hundred times a second, so the
wait is chosen for each fetch request (``Fetcher._get_actions_per_node``,
wrapped on the instance): short while a fetch brought records within
``IDLE_AFTER`` seconds, ``IDLE_FETCH_WAIT_MS`` after. An idle worker's fetch
holds every partition (none has records left over), so the broker answers
it as soon as a record arrives: the long wait costs no latency.

``ConsumerThread`` — topic ids with the fetches: the consumer's client writes
a Metadata request behind each fetch of source partitions, so the sources
agent learns which topic incarnation the records are from without a round
trip of its own (``faust_fetch_ids``).

``ConsumerThread.request_rejoin`` — a worker frozen past its session may have
been expelled without knowing it; this makes the group coordinator (on the
consumer thread's loop) join again, so ownership comes from a fresh
assignment, not from what the worker believed.

``ConsumerThread`` — the static-membership fence (``runtime/membership.py``):
with an instance id its group coordinator's requests go through
``faust_fence.watch_fence`` (aiokafka's heartbeat protocol, in a module of its
own; checked against the same ``TESTED`` versions).

``PartitionAssignor`` — a static member restarted under another URL (another
host or port) gets back the assignment the group made for its previous
life, whose metadata names the old URL; Faust's assignor asserts they match
and the consumer's coordinator dies of it. This one accepts the assignment
and asks for a rejoin, whose changed metadata makes the group rebalance, so
every worker learns where the partitions are served now.

``Recovery._seek_offsets`` — a changelog partition whose start offset Faust
could not work out (None) is read from its start instead of crashing the
recovery (aiokafka refuses the seek). Its restore loop takes the changelog
records in batches (``faust_restore``).

``TableManager.on_start`` — Faust's sleeps a second first (for tables
declared late, at import time); the runtime declares every table before the
app starts, and a restarted worker's first completion waits on this start.

``Producer.send_soon`` / ``Producer.flush`` — the complete flush
(``runtime/flush.py``): Faust commits right after the producer's flush, and
Faust's buffer flush can return with table rows still unsent. A flush first
takes the table rows the app staged (``take_staged``; the tables write their
changelogs as net effects, ``runtime/changelog.py``) and queues them as
aiokafka record batches (``flush.send_rows``), one future per batch instead of
Faust's message, future and callback per record.

Patient start-up — ``wait_for_broker`` proves the broker answered once;
Faust's clients bootstrap and declare topics right after, and a broker killed
in between made the worker exit. Within a window (``patient_bootstrap``) the
bootstrap of each client this transport makes (``Producer._new_producer``,
``ConsumerThread._create_worker_consumer``) and ``Transport._create_topic``
are tried again every second after a transient failure.

``Transport._create_topic`` also sets ``min.insync.replicas`` on each topic
the worker creates, from its replication factor (``connection.topic_config``),
and skips topics the cluster has (one metadata read answers for
``EXISTING_FOR`` seconds; Faust asks for each changelog twice at start-up,
with a round trip or two each time).

``Producer.send`` / ``Producer._send_staged`` — every record sent is counted
by topic (``GET /metrics``): commands and dead letters in ``send``, the
staged table rows as their batches are queued.

The readers of Faust's internals the runtime uses elsewhere (acks, compaction
gaps, the RocksDB stores' partitions, stream batches) are in
``runtime/faust_readers.py``, checked against the same versions.

Checked against the versions in ``TESTED``; ``check_versions`` refuses any
other at start-up (``STREAMAPP_ALLOW_UNTESTED_FAUST=1`` turns that into a
warning, for whoever checks a new version).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any, TypeVar

from aiokafka.errors import KafkaConnectionError, KafkaError
from faust.assignor import PartitionAssignor as FaustPartitionAssignor
from faust.assignor.client_assignment import ClientMetadata
from faust.tables.manager import TableManager as FaustTableManager
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

from streamapp.runtime.connection import topic_config
from streamapp.runtime.faust_drain import DrainingConsumer
from streamapp.runtime.faust_fence import watch_fence
from streamapp.runtime.faust_pacing import FETCH_MAX_WAIT_MS, AdaptiveLinger, AdaptiveWait
from streamapp.runtime.faust_readers import mark_done
from streamapp.runtime.faust_restore import BatchedRestore
from streamapp.runtime.flush import CompleteFlush, refused_row, send_rows

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEME = "streamapp"
EXISTING_FOR = 5.0  # seconds a read of the cluster's topics answers "does it exist" at start-up
# The versions whose internals this module was read against (distribution -> versions).
TESTED = {"faust-streaming": ("0.15.3",), "aiokafka": ("0.14.0",)}
ALLOW_UNTESTED = "STREAMAPP_ALLOW_UNTESTED_FAUST"


class UntestedVersionError(RuntimeError):
    """faust-streaming or aiokafka is not a version this module was checked against."""


def check_versions(env: dict[str, str] | None = None) -> None:
    """Refuse to start on a faust-streaming or aiokafka whose internals were not checked."""
    found = {}
    for dist in TESTED:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    wrong = [f"{dist} {found[dist]} (tested: {', '.join(TESTED[dist])})"
             for dist in TESTED if found[dist] not in TESTED[dist]]
    if not wrong:
        return
    message = (f"streamapp relies on internals of faust-streaming and aiokafka checked against known versions; "
               f"installed: {'; '.join(wrong)}. Install the pinned versions (pip install -e .), or set "
               f"{ALLOW_UNTESTED}=1 to start anyway while checking a new version (runtime/faust_adapter.py "
               f"lists what it relies on).")
    if (env if env is not None else os.environ).get(ALLOW_UNTESTED) == "1":
        log.warning("%s", message)
        return
    raise UntestedVersionError(message)


def transport_url(servers: list[str]) -> str:
    """Faust's broker setting for ``host:port`` servers, selecting this module's transport."""
    return ";".join(f"{SCHEME}://{server}" for server in servers)


# -- start-up patience ---------------------------------------------------------------
_patient_until = 0.0  # monotonic deadline of the start-up window (patient_bootstrap)


def patient_bootstrap(patience: float) -> None:
    """For ``patience`` seconds from now, start-up waits for the broker instead of failing.

    Covers the clients this transport makes and the topics it declares, and
    the runtime's own start-up reads (``patiently``); after the window they
    fail at once as before.
    """
    global _patient_until
    _patient_until = time.monotonic() + patience


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, KafkaConnectionError) or (isinstance(exc, KafkaError) and exc.retriable)


async def patiently(call: Callable[[], Awaitable[T]], what: str) -> T:
    """Run ``call``; within the start-up window, try it again every second while the broker is away."""
    said = 0.0
    while True:
        try:
            return await call()
        except Exception as exc:
            now = time.monotonic()
            if not _transient(exc) or now >= _patient_until:
                raise
            if now - said >= 5:
                log.warning("Waiting for the broker to %s (up to %.0fs more): %r", what, _patient_until - now, exc)
                said = now
        await asyncio.sleep(1.0)


def _patient_client(client: Any) -> None:
    """Make one aiokafka client's bootstrap patient (on the instance)."""
    plain = client.bootstrap

    async def bootstrap() -> None:
        await patiently(plain, "bootstrap")

    client.bootstrap = bootstrap


# -- the transport -------------------------------------------------------------------
class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by AIOKafkaConsumer.start() to build its Fetcher
        _patient_client(consumer._client)
        fetched = getattr(self.app, "fetched_ids", None)
        if fetched is not None:
            fetched.install(consumer._client)  # topic ids confirmed with each fetch (faust_fetch_ids)
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        if self._consumer is not None and getattr(self._consumer, "_fetcher", None) is not None:
            AdaptiveWait(self._consumer._fetcher)
        instance_id = self.app.conf.consumer_group_instance_id
        coordinator = getattr(self._consumer, "_coordinator", None)
        if instance_id and coordinator is not None:
            watch_fence(coordinator, instance_id, self._fenced)

    def _fenced(self) -> None:
        """On the consumer thread: tell the app, on the worker's loop."""
        fenced = getattr(self.app, "instance_fenced", None)
        if fenced is not None:
            self.parent_loop.call_soon_threadsafe(fenced)

    def request_rejoin(self) -> bool:
        """Ask the group coordinator for a rejoin; False when the consumer is not running yet."""
        client = self._consumer
        if client is None:
            return False
        self.thread_loop.call_soon_threadsafe(client._coordinator.request_rejoin)
        return True


class PartitionAssignor(FaustPartitionAssignor):
    def on_assignment(self, assignment: Any) -> None:
        try:
            super().on_assignment(assignment)
        except AssertionError:
            # The URL check is the last statement: everything else was taken in.
            made_for = ClientMetadata.loads(self._decompress(assignment.user_data)).url
            if made_for == str(self._url):
                raise
            log.warning("The group's assignment was made for this member at url=%s (a static member's previous "
                        "life); asking for a rebalance so peers learn url=%s", made_for, self._url)
            request_rejoin(self.app.consumer)


class Recovery(BatchedRestore):
    async def _seek_offsets(self, consumer: Any, tps: Any, offsets: Any, title: str) -> None:
        # Faust seeks each changelog partition to the offset it worked out; one it could not
        # work out (None: no persisted offset and no earliest offset, its leader being elected
        # again after a broker restart, a rebalance under way) made aiokafka refuse the seek and
        # the recovery crash, and the worker with it (seen in a chaos run). Reading that
        # partition from its start instead is always sound, only slower.
        for tp in tps:
            if not isinstance(offsets.get(tp), int) or offsets[tp] < -1:
                log.warning("No start offset for changelog partition %s (%s): reading it from its start", tp, title)
                offsets[tp] = -1
        await super()._seek_offsets(consumer, tps, offsets, title)


class TableManager(FaustTableManager):
    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery  # type: ignore[return-value]

    async def on_start(self) -> None:
        # Faust's, without its first ``await self.sleep(1.0)``: the tables are declared before the app starts.
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class Consumer(DrainingConsumer, faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def ack(self, message: Any) -> bool:
        gate = getattr(self.app, "ack_gate", None)
        if gate is not None and not gate(message):
            mark_done(message)
            return False
        return bool(super().ack(message))

    def request_rejoin(self) -> bool:
        thread = getattr(self, "_thread", None)
        return isinstance(thread, ConsumerThread) and thread.request_rejoin()


class Producer(faust_aiokafka.Producer):
    _sending: asyncio.Future[None] | None = None  # the staged rows of the latest flush, being queued

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # makes the buffer
        self.complete_flush = CompleteFlush(self.buffer.put, super().flush)
        self.sent: Counter[str] = Counter()  # records handed to the client, by topic (GET /metrics)
        self.adaptive_linger = AdaptiveLinger(self.linger_ms / 1000)

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                   timestamp: float | None, headers: Any, *, transactional_id: str | None = None) -> Any:
        # Commands and dead letters go through here; the staged table rows are counted in ``_send_staged``.
        self.sent[topic] += 1
        self.adaptive_linger.sent(self._producer)
        return await super().send(topic, key, value, partition, timestamp, headers, transactional_id=transactional_id)

    def send_soon(self, fut: Any) -> None:
        self.complete_flush.put(fut)

    async def flush(self) -> None:
        # Table rows are staged until a flush (runtime/changelog.py): send them first, so this flush,
        # and the commit that follows it, covers them.
        take = getattr(self.app, "take_staged", None)
        if take is not None:
            # Queued by a task of its own: a cancelled flush must not drop rows it took. The next
            # flush queues its rows after them (per changelog partition, in flush order).
            previous = self._sending
            sending = self._sending = asyncio.ensure_future(self._send_staged(take, previous))
            await asyncio.shield(sending)
        await self.complete_flush.flush()

    async def _send_staged(self, take: Callable[[], list[Any]], previous: asyncio.Future[None] | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        refused = getattr(self.app, "changelog_refused", refused_row)
        staged = take()
        for rows in staged:
            self.sent[rows.topic] += len(rows.records)
        await send_rows(self._ensure_producer(), staged, self.complete_flush.track, refused)

    def _new_producer(self, transactional_id: str | None = None) -> Any:
        producer = super()._new_producer(transactional_id)
        _patient_client(producer.client)
        return producer


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
    Producer = Producer

    _existing: tuple[float, set[str]] | None = None  # (when read, the cluster's topics)

    async def _create_topic(self, owner: Any, client: Any, topic: str, partitions: int, replication: int,
                            **kwargs: Any) -> None:
        if not kwargs.get("ensure_created") and topic in await self._topics_now(client):
            return  # Faust asks for each table's changelog twice at start-up, a round trip or two each
        create = super()._create_topic
        kwargs["config"] = {**topic_config(replication), **(kwargs.get("config") or {})}
        await patiently(lambda: create(owner, client, topic, partitions, replication, **kwargs),
                        f"create topic {topic}")


    async def _topics_now(self, client: Any) -> set[str]:
        """The cluster's topics, read once for the creations of ``EXISTING_FOR`` seconds (none if unreadable)."""
        now = time.monotonic()
        if self._existing is None or now - self._existing[0] > EXISTING_FOR:
            fetch = getattr(client, "fetch_all_metadata", None)
            if fetch is None:
                return set()
            try:
                self._existing = (now, set((await fetch()).topics()))
            except KafkaError:
                return set()  # Faust's own creation finds out
        return self._existing[1]


drivers.TRANSPORTS[SCHEME] = f"{__name__}:Transport"


# -- readers of internals ------------------------------------------------------------
def request_rejoin(consumer: Any) -> bool:
    """Ask the group for a new assignment; False when the consumer cannot (not started, not ours)."""
    rejoin = getattr(consumer, "request_rejoin", None)
    return bool(rejoin()) if rejoin is not None else False
