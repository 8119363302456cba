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
from typing import Any

import faust
import pytest

from streamapp.runtime import faust_adapter


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


async def test_a_flush_first_sends_what_the_app_staged_and_waits_for_it_too() -> None:
    # Table rows wait in the tables (net effects) until a flush: the app's
    # ``before_flush`` hands them over, and this flush, the one a commit
    # relies on, waits for their acks as for anything buffered before it.
    client = SlowClient(hand_off=0.1)
    app, topic = await app_with(client)
    staged = [b"row1", b"row2"]

    def before_flush() -> None:
        while staged:
            topic.send_soon(key=b"k", value=staged.pop(0))

    app.before_flush = before_flush  # type: ignore[attr-defined]
    try:
        topic.send_soon(key=b"k", value=b"buffered")
        await app.producer.flush()
        assert client.acked == [b"buffered", b"row1", b"row2"]
    finally:
        await stop(app)
