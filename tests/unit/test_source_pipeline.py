"""The sources agent's pipeline: batch N+1 is sent while batch N awaits its acks, handled strictly in order.

Broker-free: the outbox is a fake whose sends wait until the test releases
them (their "acks"); the Ingest and InFlight are the real ones.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from faust.types import TP

from streamapp.config import Settings
from streamapp.runtime import faust_readers
from streamapp.runtime.sources import EarlierRecordFailedError, InFlight, Ingest

TOPIC = "src"
P0, P1 = TP(TOPIC, 0), TP(TOPIC, 1)


@dataclass
class Msg:
    tp: TP
    offset: int
    key: bytes
    value: bytes = b"{}"
    headers: tuple[Any, ...] = ()
    acked: bool = False

    @property
    def topic(self) -> str:
        return str(self.tp.topic)

    @property
    def partition(self) -> int:
        return int(self.tp.partition)


def event(tp: TP, offset: int, key: bytes) -> Any:
    return SimpleNamespace(message=Msg(tp, offset, key))


class Outbox:
    """Each invoke waits for the test to ack (or fail) it, by source offset."""

    def __init__(self) -> None:
        self.sent: list[int] = []  # source offsets, in the order their invokes were sent
        self.acks: dict[int, asyncio.Future[None]] = {}

    def ack(self, offset: int, error: Exception | None = None) -> None:
        fut = self.acks.setdefault(offset, asyncio.get_running_loop().create_future())
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)

    async def invoke(self, target: dict[str, Any], source: Any = None) -> None:
        self.sent.append(source["offset"])
        await self.acks.setdefault(source["offset"], asyncio.get_running_loop().create_future())


class Pipeline:
    def __init__(self) -> None:
        self.outbox = Outbox()
        handler = SimpleNamespace(input_type=None, decode_input=lambda payload: payload)
        runtime = SimpleNamespace(
            settings=Settings(app_id="app", subscriptions=[(TOPIC, "Svc/run")]),
            kafka={}, outbox=self.outbox, registry=SimpleNamespace(lookup=lambda service, name: handler),
        )
        self.ingest = Ingest(runtime)  # type: ignore[arg-type]
        self.ingest.topic_ids[TOPIC] = "2b384d45-948b-45f7-bf1a-a5280752ba11"
        self.handled: list[int] = []
        self.forgotten: list[set[TP]] = []
        self.inflight = InFlight(self.ingest, lambda msg: self.handled.append(msg.offset), self.forgotten.append)


async def turns(n: int = 10) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_later_batch_sent_at_once_but_handled_only_after_the_earlier_one() -> None:
    pl = Pipeline()
    first = pl.inflight.launch([event(P0, 0, b"a")])
    second = pl.inflight.launch([event(P1, 0, b"b")])
    await turns()
    assert sorted(pl.outbox.sent) == [0, 0]  # both in flight: the second did not wait for the first's ack
    pl.outbox.acks[0].set_result(None)  # (both offsets are 0: one future stands for both acks)
    assert await first and await second
    assert pl.handled == [0, 0]

    pl = Pipeline()
    first = pl.inflight.launch([event(P0, 0, b"a")])
    second = pl.inflight.launch([event(P0, 1, b"b")])
    await turns()
    pl.outbox.ack(1)  # the later batch is durable first...
    await turns()
    assert not second.done() and pl.handled == []  # ...but not handled before the earlier one
    pl.outbox.ack(0)
    assert await first and await second
    assert pl.handled == [0, 1]


async def test_records_of_one_key_wait_for_the_previous_ack_across_batches() -> None:
    pl = Pipeline()
    pl.inflight.launch([event(P0, 0, b"k")])
    pl.inflight.launch([event(P0, 1, b"k"), event(P0, 2, b"other")])
    await turns()
    assert sorted(pl.outbox.sent) == [0, 2]  # offset 1 waits behind offset 0 (same key); 2 goes
    pl.outbox.ack(0)
    await turns()
    assert pl.outbox.sent[-1] == 1


async def test_failed_batch__later_ones_not_handled__partitions_forgotten__failure_raised_once() -> None:
    pl = Pipeline()
    first = pl.inflight.launch([event(P0, 0, b"a")])
    second = pl.inflight.launch([event(P1, 1, b"b")])
    third = pl.inflight.launch([event(P1, 2, b"a")])  # same key as the failing record
    await turns()
    assert sorted(pl.outbox.sent) == [0, 1]
    pl.outbox.ack(1)
    pl.outbox.ack(0, KafkaConnectionError("broker gone"))
    assert [await first, await second, await third] == [False, False, False]
    assert pl.outbox.sent == [0, 1] or pl.outbox.sent == [1, 0]  # offset 2 never overtook the failed 0
    assert pl.handled == []  # the second was durable, but behind an undurable batch: not committable
    assert pl.forgotten == [{P0}, {P1}, {P1}]  # read again from the commit
    with pytest.raises(KafkaConnectionError):
        pl.inflight.check()
    pl.inflight.check()  # raised once: the restarted agent goes on


async def test_a_key_whose_record_failed_sends_none_of_its_later_records() -> None:
    pl = Pipeline()
    pl.inflight.launch([event(P0, 0, b"k")])
    later = asyncio.ensure_future(pl.ingest.batch([event(P0, 1, b"k")], pl.inflight.tails,
                                                  dict(pl.ingest.topic_ids)))
    await turns()
    pl.outbox.ack(0, KafkaConnectionError("broker gone"))
    with pytest.raises(EarlierRecordFailedError):
        await later
    assert pl.outbox.sent == [0]


async def test_room__waits_while_depth_batches_are_in_flight() -> None:
    pl = Pipeline()
    pl.inflight.depth = 2
    pl.inflight.launch([event(P0, 0, b"a")])
    pl.inflight.launch([event(P0, 1, b"b")])
    room = asyncio.ensure_future(pl.inflight.room())
    await turns()
    assert not room.done()
    pl.outbox.ack(0)
    await asyncio.wait_for(room, 1)


class Stream:
    def __init__(self) -> None:
        self.acked: list[int] = []

    async def ack(self, event: Any) -> bool:
        self.acked.append(event.message.offset)
        return True


def batch(*offsets: int) -> faust_readers.Batch:
    return faust_readers.Batch(event(P0, offset, b"k") for offset in offsets)


async def test_ack_batch__acks_in_batch_order_each_once_its_work_ended() -> None:
    stream = Stream()
    loop = asyncio.get_running_loop()
    first, second, third = batch(0, 1), batch(2), batch(3)
    first.after, second.after = loop.create_future(), loop.create_future()
    acking = await faust_readers.ack_batch(stream, first, None)
    acking = await faust_readers.ack_batch(stream, second, acking)
    acking = await faust_readers.ack_batch(stream, third, acking)  # no work of its own: still after the others
    second.after.set_result(True)
    await turns()
    assert stream.acked == []  # the second's work ended, the first's did not
    first.after.set_result(True)
    assert acking is not None
    await acking
    assert stream.acked == [0, 1, 2, 3]
    assert await faust_readers.ack_batch(stream, batch(4), acking) is None  # nothing waiting: acked now
    assert stream.acked[-1] == 4


async def test_ack_batch__a_failed_batch_is_acked_too() -> None:
    """The ack gate refuses an unhandled record's ack; the ack must still happen (Faust stops waiting for it)."""
    stream = Stream()
    failed = batch(0)
    failed.after = asyncio.get_running_loop().create_future()
    acking = await faust_readers.ack_batch(stream, failed, None)
    failed.after.set_exception(KafkaConnectionError("broker gone"))
    assert acking is not None
    await acking
    assert stream.acked == [0]
