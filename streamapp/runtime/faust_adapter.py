"""Every use of Faust and aiokafka internals, in one module, reached through Faust's transport registry.

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

``ConsumerThread.request_rejoin`` — a worker frozen past its session may have
been expelled without knowing it; this makes the group coordinator (on the
consumer thread's loop) join again, so ownership comes from a fresh
assignment, not from what the worker believed.

``ConsumerThread`` — the static-membership fence (``runtime/membership.py``).
aiokafka sends heartbeats at versions 0-1, which cannot carry the
``group.instance.id``; a member replaced by another process with the same
id then hears UNKNOWN_MEMBER_ID, resets its member id and joins again with
the same instance id, which replaces the other process in turn: both hold
the same partitions, a second at a time, under one generation. With an
instance id, heartbeats go out at version 3 with the id
(``StaticHeartbeatRequest``), so the broker answers FENCED_INSTANCE_ID to
the replaced member; from that answer on, the group protocol's requests
never return (no rejoin, no error for Faust to handle), offset commits fail
at once (a commit waiting on the fence would hold the stop), and the app's
``instance_fenced`` runs on the worker's loop.

``PartitionAssignor`` — a static member restarted under another URL (another
host or port) gets back the assignment the group made for its previous
life, whose metadata names the old URL; Faust's assignor asserts they match
and the consumer's coordinator dies of it. This one accepts the assignment
and asks for a rejoin, whose changed metadata makes the group rebalance, so
every worker learns where the partitions are served now.

``TableManager.on_start`` — Faust's sleeps a second first (for tables
declared late, at import time); the runtime declares every table before the
app starts, and a restarted worker's first completion waits on this start.

``Producer.send_soon`` / ``Producer.flush`` — the complete flush
(``runtime/flush.py``): Faust commits right after the producer's flush, and
Faust's buffer flush can return with table rows still unsent. A flush first
takes the table rows the app staged (``take_staged``; the tables write their
changelogs as net effects, ``runtime/changelog.py``) and queues them as
aiokafka record batches (``send_rows``), one future per batch instead of
Faust's message, future and callback per record.

Patient start-up — ``wait_for_broker`` proves the broker answered once;
Faust's clients bootstrap and declare topics right after, and a broker killed
in between made the worker exit. Within a window (``patient_bootstrap``) the
bootstrap of each client this transport makes (``Producer._new_producer``,
``ConsumerThread._create_worker_consumer``) and ``Transport._create_topic``
are tried again every second after a transient failure.

``Transport._create_topic`` also sets ``min.insync.replicas`` on each topic
the worker creates, from its replication factor (``connection.topic_config``).

``Producer.send`` / ``Producer._send_staged`` — every record sent is counted
by topic (``GET /metrics``): commands and dead letters in ``send``, the
staged table rows as their batches are queued.

``take_ready`` — Faust's ``Stream.take_events`` without its timer while
nothing arrives (an idle worker woke 200 times a second for it).

Readers of internals: ``forget_gap`` (the consumer's compaction-gap ranges),
``mark_done`` (a message's ``acked`` flag under Faust's ack lock) and the
RocksDB store's per-partition DBs (``open_partitions``, ``items``, ``keys``).

Checked against the versions in ``TESTED``; ``check_versions`` refuses any
other at start-up (``STREAMAPP_ALLOW_UNTESTED_FAUST=1`` turns that into a
warning, for whoever checks a new version).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from importlib import metadata
from typing import Any, TypeVar

from aiokafka.errors import KafkaConnectionError, KafkaError, UnknownMemberIdError
from aiokafka.protocol import commit as commit_protocol
from aiokafka.protocol import group as group_protocol
from aiokafka.protocol.api import Request, RequestStruct
from aiokafka.protocol.types import Int32, Schema, String
from faust.assignor import PartitionAssignor as FaustPartitionAssignor
from faust.assignor.client_assignment import ClientMetadata
from faust.tables.manager import TableManager as FaustTableManager
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock

from streamapp.runtime.connection import topic_config
from streamapp.runtime.flush import CompleteFlush

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEME = "streamapp"
FETCH_MAX_WAIT_MS = 10  # while records flow
IDLE_FETCH_WAIT_MS = 500  # at rest (aiokafka's own default)
IDLE_AFTER = 1.0  # seconds without fetched records before the worker counts as at rest
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
class AdaptiveWait:
    """Chooses each fetch request's wait: short while records flow, long at rest."""

    def __init__(self, fetcher: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.fetcher = fetcher
        self.clock = clock
        self.busy_at = clock()
        self.plain = fetcher._get_actions_per_node
        fetcher._get_actions_per_node = self.actions_per_node

    def wait_ms(self) -> int:
        now = self.clock()
        # A fetch brought records a moment ago (those of partitions no agent reads, the
        # table changelogs after their recovery, stay in the fetcher and age: they do not count).
        if any(now - getattr(fetched, "_created", float("-inf")) <= IDLE_AFTER
               for fetched in list(self.fetcher._records.values())):
            self.busy_at = now
        return FETCH_MAX_WAIT_MS if now - self.busy_at <= IDLE_AFTER else IDLE_FETCH_WAIT_MS

    def actions_per_node(self, assignment: Any) -> Any:
        self.fetcher._fetch_max_wait_ms = self.wait_ms()  # read when the fetch requests are built
        return self.plain(assignment)


FENCED_INSTANCE_ID = 82  # Kafka's error code: another process joined with this group.instance.id


class StaticHeartbeatRequestV3(RequestStruct):
    """Heartbeat v3: v1's fields and the group.instance.id (KIP-345); the response is v1's."""

    API_KEY = 12
    API_VERSION = 3
    RESPONSE_TYPE = group_protocol.HeartbeatResponse_v1
    SCHEMA = Schema(
        ("group", String("utf-8")),
        ("generation_id", Int32),
        ("member_id", String("utf-8")),
        ("group_instance_id", String("utf-8")),
    )


class StaticHeartbeatRequest(Request[StaticHeartbeatRequestV3]):
    API_KEY = 12

    def __init__(self, group: str, generation_id: int, member_id: str, group_instance_id: str) -> None:
        self.fields = (group, generation_id, member_id, group_instance_id)

    def build(self, request_struct_class: type[StaticHeartbeatRequestV3]) -> StaticHeartbeatRequestV3:
        return request_struct_class(*self.fields)


UNKNOWN_MEMBER_ID = 25


def _unknown_member(response: Any) -> bool:
    """Whether a response says UNKNOWN_MEMBER_ID (at the top, or for a partition of an OffsetCommit)."""
    if getattr(response, "error_code", None) == UNKNOWN_MEMBER_ID:
        return True
    topics = getattr(response, "topics", None) if type(response).__name__.startswith("OffsetCommit") else None
    return any(part[-1] == UNKNOWN_MEMBER_ID for _, parts in topics or () for part in parts)


def watch_fence(coordinator: Any, instance_id: str, fenced: Callable[[], None]) -> None:
    """Heartbeats of ``coordinator`` carry ``instance_id``; once fenced, call ``fenced()`` and go silent.

    aiokafka's OffsetCommit and SyncGroup cannot carry the id either, so a
    replaced member hears UNKNOWN_MEMBER_ID there too, and would reset its
    member id and join again (replacing the other process). Before such an
    answer reaches the coordinator, a v3 heartbeat asks the broker which it
    is: FENCED_INSTANCE_ID (another process has the id: fenced) or not (the
    member expired: the answer goes on, and the coordinator joins afresh).
    """
    plain = coordinator._send_req
    out = False

    def heartbeat() -> StaticHeartbeatRequest:
        return StaticHeartbeatRequest(coordinator.group_id, coordinator.generation, coordinator.member_id,
                                      instance_id)

    async def silent(request: Any) -> Any:
        """A fenced member's request: offsets fail at once (Faust's commit, the stop's last one, goes
        on without them); the group protocol's never answer (no rejoin), until the consumer stops."""
        if isinstance(request, (commit_protocol.OffsetCommitRequest, commit_protocol.OffsetFetchRequest)):
            raise UnknownMemberIdError(f"fenced: another process has group.instance.id={instance_id}")
        return await asyncio.get_running_loop().create_future()

    async def send_req(request: Any) -> Any:
        nonlocal out
        if out:
            return await silent(request)
        heartbeating = isinstance(request, group_protocol.HeartbeatRequest)
        response = await plain(heartbeat() if heartbeating else request)
        verdict = response
        if not heartbeating and _unknown_member(response):
            try:
                verdict = await plain(heartbeat())
            except KafkaError:
                pass  # the coordinator is away: the first answer goes on
        if getattr(verdict, "error_code", None) == FENCED_INSTANCE_ID and not out:
            out = True
            log.critical("The group fenced this member: another process joined with group.instance.id=%s",
                         instance_id)
            fenced()
        return await silent(request) if out else response

    coordinator._send_req = send_req


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by AIOKafkaConsumer.start() to build its Fetcher
        _patient_client(consumer._client)
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


class TableManager(FaustTableManager):
    async def on_start(self) -> None:
        # Faust's, without its first ``await self.sleep(1.0)``: the tables are declared before the app starts.
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class Consumer(faust_aiokafka.Consumer):
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

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                   timestamp: float | None, headers: Any, *, transactional_id: str | None = None) -> Any:
        # Commands and dead letters go through here; the staged table rows are counted in ``_send_staged``.
        self.sent[topic] += 1
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
        refused = getattr(self.app, "changelog_refused", _refused)
        staged = take()
        for rows in staged:
            self.sent[rows.topic] += len(rows.records)
        await send_rows(self._ensure_producer(), staged, self.complete_flush.track, refused)

    def _new_producer(self, transactional_id: str | None = None) -> Any:
        producer = super()._new_producer(transactional_id)
        _patient_client(producer.client)
        return producer


def _refused(topic: str, exc: BaseException) -> None:
    log.critical("Changelog write refused topic=%s error=%r", topic, exc)


async def send_rows(client: Any, staged: list[Any], track: Callable[[asyncio.Future[Any]], None],
                    refused: Callable[[str, BaseException], None]) -> None:
    """Queue staged changelog rows (``changelog.StagedRows``) as record batches, one or more per partition.

    aiokafka's own batch API (``create_batch``/``send_batch``): one future per
    batch, not a Faust message, a future and a callback per record. ``track``
    gets each batch's delivery future (the flush waits for it); when a batch
    is delivered, its table learns the offset of its last record (what
    Faust's ``_on_changelog_sent`` records per row); when the broker refuses
    one, ``refused(topic, error)``.
    """
    for rows in staged:
        batch = client.create_batch()
        count = 0
        for key, value, headers in rows.records:
            if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:  # full
                await _send_batch(client, batch, rows, count, track, refused)
                batch, count = client.create_batch(), 0
                batch.append(timestamp=None, key=key, value=value, headers=headers)  # a first record always fits
            count += 1
        if count:
            await _send_batch(client, batch, rows, count, track, refused)


async def _send_batch(client: Any, batch: Any, rows: Any, count: int,
                      track: Callable[[asyncio.Future[Any]], None],
                      refused: Callable[[str, BaseException], None]) -> None:
    try:
        fut = await client.send_batch(batch, rows.topic, partition=rows.partition)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        refused(rows.topic, exc)
        raise

    def delivered(done: asyncio.Future[Any]) -> None:
        if done.cancelled():
            return
        exc = done.exception()
        if exc is not None:
            refused(rows.topic, exc)
        else:
            rows.table.rows_sent(rows.partition, done.result().offset + count - 1)

    fut.add_done_callback(delivered)
    track(fut)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
    Producer = Producer

    async def _create_topic(self, owner: Any, client: Any, topic: str, partitions: int, replication: int,
                            **kwargs: Any) -> None:
        create = super()._create_topic
        kwargs["config"] = {**topic_config(replication), **(kwargs.get("config") or {})}
        await patiently(lambda: create(owner, client, topic, partitions, replication, **kwargs),
                        f"create topic {topic}")


drivers.TRANSPORTS[SCHEME] = f"{__name__}:Transport"


# -- readers of internals ------------------------------------------------------------
def request_rejoin(consumer: Any) -> bool:
    """Ask the group for a new assignment; False when the consumer cannot (not started, not ours)."""
    rejoin = getattr(consumer, "request_rejoin", None)
    return bool(rejoin()) if rejoin is not None else False


def mark_done(message: Any) -> None:
    """Done with this delivery, not acked: the commit stays below it and it is read again later."""
    with ack_lock:
        message.acked = True


def forget_gap(consumer: Any, tp: TP, start: int, end: int) -> None:
    """Drop ``[start, end)`` from the consumer's compaction gaps of ``tp``.

    Faust counts a jump in offsets as a compaction gap that may be committed
    without being acked; after a hole the offset guard filled, that range
    was read again and is acked record by record.
    """
    gaps = getattr(consumer, "_gap", None)
    if gaps is not None and tp in gaps:
        gaps[tp].chop(start, end)


def open_partitions(store: Any) -> list[int]:
    """The partitions of a Faust RocksDB store with a local DB open."""
    return list(store._dbs)


def items(store: Any, partition: int, start: str | None = None) -> Iterator[tuple[str, Any]]:
    """One partition's (key, value) pairs of a Faust RocksDB store, in key order, from ``start``.

    Faust keeps one DB per partition; its public ``items()`` spans all
    active partitions. Lazy: a value is read and decoded only when reached.
    """
    db = store._db_for_partition(partition)
    from_key = None if start is None else store._encode_key(start)
    for raw_key, raw_value in db.items(from_key=from_key):
        if raw_key != store.offset_key:
            yield store._decode_key(raw_key), store._decode_value(raw_value)


def keys(store: Any, partition: int, start: str | None = None) -> Iterator[str]:
    """One partition's keys of a Faust RocksDB store, in key order, from ``start``; no value is read."""
    db = store._db_for_partition(partition)
    from_key = None if start is None else store._encode_key(start)
    # Faust stores these str keys JSON-encoded; its codec registry costs more
    # than the RocksDB read, so decode with json when that is the encoding
    # (checked on a probe key), else through the store.
    decode = json.loads if store._encode_key('k/"') == json.dumps('k/"').encode() else store._decode_key
    for raw_key in db.keys(from_key=from_key):
        if raw_key != store.offset_key:
            yield decode(raw_key)


def take_ready(stream: Any, max_: int, gather: float) -> AsyncIterator[list[Any]]:
    """Batches of a stream's events (``_take_ready``), tracked as Faust tracks ``take_events``.

    Faust closes the buffering generators it tracks when the stream stops,
    which acks what they consumed and detaches their processor.
    """
    agen = _take_ready(stream, max_, gather)
    active = getattr(stream, "_active_agens", None)
    if active is not None:
        active.add(agen)
    return agen


async def _take_ready(stream: Any, max_: int, gather: float) -> AsyncIterator[list[Any]]:
    """Like Faust's ``Stream.take_events``, without a timer while nothing arrives.

    ``take_events(max_, within)`` wakes every ``within`` seconds to look at
    its buffer, also when the topic is idle (200 wake-ups a second at 5 ms).
    This waits for the first event with no timeout, then ``gather`` seconds
    for what arrives with it (a fetch delivers a partition's records one by
    one), or less if ``max_`` are in, and yields them. Acks as Faust does:
    each event once the caller is done with the batch.
    """
    buffer: list[Any] = []
    arrived = asyncio.Event()
    full = asyncio.Event()
    consumed = asyncio.Event()
    consuming: asyncio.Future[None] | None = None
    enable_acks = stream.enable_acks

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming
        if consuming is not None:
            try:
                await consuming
            finally:
                consuming = None
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_ready found current_event is None")
        buffer.append(event)
        arrived.set()
        if len(buffer) >= max_:
            full.set()
            consumed.clear()
            await stream.wait(consumed)  # never more than max_ in one batch
        return value

    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(arrived)
            if not full.is_set():
                await stream.wait_for_stopped(full, timeout=gather)
            if not buffer:
                arrived.clear()
                continue
            consuming = asyncio.get_running_loop().create_future()
            events = list(buffer)
            try:
                yield events
            finally:
                buffer.clear()
                for event in events:
                    await stream.ack(event)
                arrived.clear()
                full.clear()
                if not consuming.done():
                    consuming.set_result(None)
                consumed.set()
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)
