"""Readers of Faust's internals (checked against ``faust_adapter.TESTED``), used across the runtime.

``mark_done`` (a message's ``acked`` flag under Faust's ack lock),
``forget_gap`` (the consumer's compaction-gap ranges), the RocksDB store's
per-partition DBs (``open_partitions``, ``items``, ``keys``), and
``take_ready``: Faust's ``Stream.take_events`` without its timer while
nothing arrives (an idle worker woke 200 times a second for it),
``as_record_of``: the current event the tables read their partition from,
``put_raw``: a store write of bytes already encoded, and ``read_row``: a
table read with one store read where Faust makes two.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

from faust import streams
from faust.stores import base as store_base
from faust.stores import rocksdb
from faust.types import TP
from faust.types.tuples import ack_lock


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


def handed_over(consumer: Any, tp: TP) -> int | None:
    """The offset of the last record the consumer handed to the streams from ``tp`` (None: none yet).

    Not Faust's ``_read_offset``: a seek sets that to the offset sought, before any record of it was read.
    """
    handed = getattr(consumer, "handed_over", None)
    return None if handed is None else handed.get(tp)


def get_raw(store: Any, partition: int, key: bytes) -> bytes | None:
    """The encoded row under the encoded ``key`` (a changelog record's) in one partition's RocksDB (None: no row)."""
    value = store._db_for_partition(partition).get(key)
    return None if value is None else bytes(value)


def decode_key(store: Any, key: bytes) -> Any:
    """A changelog record's key as the table's (the store's key codec)."""
    return store._decode_key(key)


def put_raw(store: Any, key: bytes, value: bytes) -> None:
    """Write an encoded row into a RocksDB store (``Store.__setitem__`` without its encoding).

    The partition is the current event's, as for any table write.
    """
    store._set(key, value)


MISSING: Any = object()  # ``read_row``: the store has no row under the key


def read_row(store: Any, key: Any) -> Any:
    """``store[key]`` decoded, or ``MISSING``: what ``key in store`` and then ``store[key]`` answer, in one read.

    A Faust table answers ``table.get(key)`` and ``table[key]`` with mode's
    ``FastUserDict.__getitem__``: a table has ``__missing__``, so it asks
    ``key in store`` (``Store._contains``, a RocksDB read) and then
    ``store[key]`` (``Store._get``, the same read again). On Faust's RocksDB
    store the two look in the same DBs with the same test: the current
    event's partition's DB inside an agent (or a stand-in,
    ``as_record_of``), else the DB of the partition the key was last found
    in, or every DB open here, where a row is a value that is not None.
    So ``_get`` finds a row exactly when ``_contains`` says there is one,
    and reading it once answers both (what ``_get`` notes of where the key
    was found, it notes in both cases). A store of another kind, or one
    whose reads are overridden, is asked as Faust asks it.
    """
    one = _ONE_READ.get(type(store))
    if one is None:
        one = _one_read(type(store))
    if one:
        raw = store._get(store._encode_key(key))
        return MISSING if raw is None else store._decode_value(raw)
    if key in store:
        return store[key]
    return MISSING


_ONE_READ: dict[type, bool] = {}


def _one_read(cls: type) -> bool:
    """Whether ``cls`` reads rows as Faust's RocksDB store does (``read_row``); remembered per class."""
    same = (issubclass(cls, rocksdb.Store)
            and cls._get is rocksdb.Store._get and cls._contains is rocksdb.Store._contains
            and cls.__getitem__ is store_base.SerializedStore.__getitem__
            and cls.__contains__ is store_base.SerializedStore.__contains__)
    _ONE_READ[cls] = same
    return same


class _StandIn:
    """An event as the tables read it: its ``message`` (weakly referenced, as Faust holds events)."""

    def __init__(self, message: Any) -> None:
        self.message = message


@contextlib.contextmanager
def as_record_of(topic: str, partition: int, offset: int) -> Iterator[None]:
    """Table reads and writes inside go to ``partition``, as in an agent's iteration over that record.

    Faust's tables and RocksDB stores take the partition of a read or write
    from the event being processed (``faust.streams.current_event``, a
    context variable holding a weak reference); outside an agent there is
    none. This sets a stand-in for the record at ``topic``/``partition``/``offset``.
    """
    event = _StandIn(SimpleNamespace(topic=topic, partition=partition, offset=offset))
    token = streams._current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        yield
    finally:
        streams._current_event.reset(token)


QUIET_TURNS = 2  # turns of the event loop without a new event: the fetch was handed over


async def _settle(buffer: list[Any], full: asyncio.Event, gather: float) -> None:
    """Wait while the records of the fetch under way keep arriving, at most ``gather`` seconds.

    Faust hands a fetch's records to the stream in a few turns of the event
    loop; a fixed wait (Faust's ``within``) would add that wait to every
    record's latency at low rates.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + gather
    seen, quiet = len(buffer), 0
    while quiet < QUIET_TURNS and not full.is_set() and loop.time() < deadline:
        await asyncio.sleep(0)
        quiet = quiet + 1 if len(buffer) == seen else 0
        seen = len(buffer)


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
    This waits for the first event with no timeout, then for what arrives
    with it (a fetch delivers a partition's records one by one): until the
    buffer stops growing (``_settle``), ``max_`` are in, or ``gather``
    seconds passed, and yields them. Acks as Faust does: each event once the
    caller is done with the batch.
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
            await _settle(buffer, full, gather)
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
