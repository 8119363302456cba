"""The flush before a commit waits for every record buffered before it, however slow a send is.

Faust's ``ProducerBuffer.flush`` gives up as soon as one record takes more
than 0.1 s to hand to the Kafka client (a broker restart, a leader moving, a
full accumulator) and Faust then commits: a crash in that window lost the
table rows of committed commands (chaos: lost invocations, journals that
diverged between two owners). These tests drive Faust's own buffer, topic
and sensors, and streamapp's transport producer (``runtime/faust_adapter.py``);
only the Kafka client is a fake.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import faust
import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from streamapp.runtime import changelog, faust_adapter


class SlowClient:
    """Stands in for aiokafka: each send blocks ``hand_off`` s, the broker acks ``ack`` s later."""

    def __init__(self, hand_off: float, ack: float = 0.05, fail: bytes | None = None) -> None:
        self.hand_off, self.ack, self.fail = hand_off, ack, fail
        self.acked: list[bytes] = []

    async def send(self, topic: str, key: bytes | None, value: bytes | None, *args: Any, **kw: Any) -> Any:
        await asyncio.sleep(self.hand_off)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def ack() -> None:
            if value == self.fail:
                fut.set_exception(RuntimeError("broker refused the record"))
                return
            self.acked.append(value or b"")
            fut.set_result(object())

        asyncio.get_running_loop().call_later(self.ack, ack)
        return fut


async def app_with(client: SlowClient, faust_only: bool = False) -> tuple[faust.App, faust.TopicT]:
    """An app on streamapp's transport (on Faust's own with ``faust_only``) sending through ``client``."""
    broker = "kafka://127.0.0.1:1" if faust_only else faust_adapter.transport_url(["127.0.0.1:1"])
    app = faust.App(f"flush-{id(client)}", broker=broker, store="memory://")
    topic = app.topic("t-changelog", key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw")

    async def get_producer() -> Any:
        return client

    topic._get_producer = get_producer  # type: ignore[method-assign]
    await app.producer.buffer.start()
    return app, topic


async def stop(app: faust.App) -> None:
    buffer = app.producer.buffer
    while not buffer.pending.empty():  # Faust's buffer refuses to stop with records left
        buffer.pending.get_nowait()
    await buffer.stop()


async def test_faust_flush_alone_returns_with_records_still_buffered() -> None:
    # The defect this module exists for: if this starts failing, Faust fixed it.
    client = SlowClient(hand_off=0.25)
    app, topic = await app_with(client, faust_only=True)
    assert not isinstance(app.producer, faust_adapter.Producer)
    try:
        for i in range(4):
            topic.send_soon(key=b"k", value=b"%d" % i)
        await app.producer.flush()
        assert len(client.acked) < 4
    finally:
        await stop(app)


async def test_flush_waits_for_every_record_buffered_before_it() -> None:
    client = SlowClient(hand_off=0.25)
    app, topic = await app_with(client)
    assert isinstance(app.producer, faust_adapter.Producer)
    try:
        for i in range(4):
            topic.send_soon(key=b"k", value=b"%d" % i)
        await app.producer.flush()
        assert client.acked == [b"0", b"1", b"2", b"3"]
    finally:
        await stop(app)


async def test_flush_does_not_wait_for_records_buffered_after_it_began() -> None:
    # Under steady load the agent keeps writing while a commit flushes: waiting
    # for those too would postpone the commit for as long as the load lasts.
    client = SlowClient(hand_off=0.2)
    app, topic = await app_with(client)
    assert isinstance(app.producer, faust_adapter.Producer)
    try:
        topic.send_soon(key=b"k", value=b"before")
        flush = asyncio.ensure_future(app.producer.flush())
        await asyncio.sleep(0)
        for i in range(20):
            topic.send_soon(key=b"k", value=b"after%d" % i)
        await asyncio.wait_for(flush, timeout=2.0)
        assert b"before" in client.acked
        assert len(client.acked) < 21
    finally:
        await stop(app)


async def test_a_record_the_broker_refused_fails_the_flush() -> None:
    client = SlowClient(hand_off=0.01, fail=b"bad")
    app, topic = await app_with(client)
    assert isinstance(app.producer, faust_adapter.Producer)
    try:
        topic.send_soon(key=b"k", value=b"good")
        topic.send_soon(key=b"k", value=b"bad")
        with pytest.raises(RuntimeError, match="refused"):
            await app.producer.flush()
    finally:
        await stop(app)


async def test_a_cancelled_flush_leaves_the_records_to_the_next_one() -> None:
    client = SlowClient(hand_off=0.3)
    app, topic = await app_with(client)
    flusher = app.producer.complete_flush
    try:
        topic.send_soon(key=b"k", value=b"one")
        first = asyncio.ensure_future(app.producer.flush())
        await asyncio.sleep(0.05)
        first.cancel()
        await app.producer.flush()
        assert client.acked == [b"one"]
        assert not flusher.unsent
    finally:
        await stop(app)


class BatchClient:
    """Stands in for aiokafka's batch API: each ``send_batch`` blocks ``hand_off`` s, the ack comes ``ack`` s later.

    The batches are real aiokafka record batches, read back as the broker would.
    """

    def __init__(self, hand_off: float, ack: float = 0.05, fail: bytes | None = None,
                 batch_size: int = 16384) -> None:
        self.hand_off, self.ack, self.fail, self.batch_size = hand_off, ack, fail, batch_size
        self.queued: list[tuple[str, int, list[Any]]] = []  # (topic, partition, records) in send order
        self.acked: list[bytes] = []  # values, in ack order
        self.next_offset: dict[tuple[str, int], int] = {}

    def create_batch(self) -> Any:
        return BatchBuilder(self.batch_size, 0)

    async def flush(self) -> None:
        """aiokafka's flush, which Faust's calls: hands nothing over (the flush must wait on its own)."""

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        records = list(DefaultRecordBatch(bytearray(batch._build())))
        await asyncio.sleep(self.hand_off)
        self.queued.append((topic, partition, records))
        base = self.next_offset.get((topic, partition), 0)
        self.next_offset[topic, partition] = base + len(records)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def ack() -> None:
            if any(r.value == self.fail for r in records):
                fut.set_exception(RuntimeError("broker refused the batch"))
                return
            self.acked.extend(r.value or b"" for r in records)
            fut.set_result(types.SimpleNamespace(offset=base))

        asyncio.get_running_loop().call_later(self.ack, ack)
        return fut


class StagedTable:
    """A table's side of staged rows: which offsets the broker confirmed (``rows_sent``)."""

    def __init__(self) -> None:
        self.persisted: dict[int, int] = {}

    def rows_sent(self, partition: int, last_offset: int) -> None:
        self.persisted[partition] = last_offset


def stage(app: faust.App, client: BatchClient, *batches: tuple[int, list[bytes]]) -> tuple[StagedTable, list[Any]]:
    """Give the app staged rows ``(partition, [values])`` for the next flush; what it was refused, and the table."""
    table = StagedTable()
    refused: list[Any] = []
    app.producer._producer = client  # type: ignore[attr-defined]
    app.take_staged = lambda: [  # type: ignore[attr-defined]
        changelog.StagedRows(table, "t-changelog", partition, [(b"k", v, [(changelog.HEADER, b"1")]) for v in vs])
        for partition, vs in batches]
    app.changelog_refused = lambda topic, exc: refused.append((topic, exc))  # type: ignore[attr-defined]
    return table, refused


async def test_a_flush_first_sends_what_the_app_staged_as_record_batches_and_waits_for_them_too() -> None:
    # Table rows wait in the tables (net effects) until a flush: the app's
    # ``take_staged`` hands them over, the producer queues them as one record
    # batch per changelog partition, and this flush, the one a commit relies
    # on, waits for their acks as for anything buffered before it.
    client = SlowClient(hand_off=0.1)
    app, topic = await app_with(client)
    batches = BatchClient(hand_off=0.1, ack=0.2)
    table, refused = stage(app, batches, (0, [b"row1", b"row2"]), (1, [b"row3"]))
    try:
        topic.send_soon(key=b"k", value=b"buffered")
        await app.producer.flush()
        assert client.acked == [b"buffered"]
        assert batches.acked == [b"row1", b"row2", b"row3"]
        assert [(p, [r.value for r in records]) for _, p, records in batches.queued] == [
            (0, [b"row1", b"row2"]), (1, [b"row3"])]
        assert batches.queued[0][2][0].headers == [(changelog.HEADER, b"1")]
        # The table learns the offset of each partition's last row (where a later start restores from).
        assert table.persisted == {0: 1, 1: 0}
        assert refused == []
    finally:
        await stop(app)


async def test_staged_rows_beyond_one_batch_go_in_several_in_order() -> None:
    client = SlowClient(hand_off=0.01)
    app, _ = await app_with(client)
    batches = BatchClient(hand_off=0.01, batch_size=200)
    values = [b"%03d" % i + b"x" * 60 for i in range(10)]
    table, _ = stage(app, batches, (0, values))
    try:
        await app.producer.flush()
        assert len(batches.queued) > 2
        assert [r.value for _, _, records in batches.queued for r in records] == values
        assert table.persisted == {0: 9}
    finally:
        await stop(app)


async def test_a_cancelled_flush_does_not_drop_the_rows_it_took() -> None:
    # The rows left the tables when the flush took them: if the flush is
    # cancelled while they are being queued, they are still queued, and the
    # next flush waits for them (its commit covers their commands).
    client = SlowClient(hand_off=0.01)
    app, _ = await app_with(client)
    batches = BatchClient(hand_off=0.2, ack=0.2)
    stage(app, batches, (0, [b"first"]))
    try:
        first = asyncio.ensure_future(app.producer.flush())
        await asyncio.sleep(0.05)
        first.cancel()
        stage(app, batches, (0, [b"second"]))
        await app.producer.flush()
        assert batches.acked == [b"first", b"second"]
    finally:
        await stop(app)


async def test_a_batch_the_broker_refused_fails_the_flush_and_is_reported() -> None:
    client = SlowClient(hand_off=0.01)
    app, _ = await app_with(client)
    batches = BatchClient(hand_off=0.01, fail=b"bad")
    table, refused = stage(app, batches, (0, [b"good"]), (1, [b"bad"]))
    try:
        with pytest.raises(RuntimeError, match="refused"):
            await app.producer.flush()
        assert [topic for topic, _ in refused] == ["t-changelog"]  # the worker stops (ChangelogGuard)
        assert table.persisted == {0: 0}
    finally:
        await stop(app)
