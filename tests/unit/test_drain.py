"""Faust's delivery loop without tasks per record (faust_drain): a plain await only where nothing can block."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from streamapp.runtime import faust_drain

TPA = TP("t", 0)


class Queue:
    def __init__(self, full: bool = False) -> None:
        self.is_full = full

    def full(self) -> bool:
        return self.is_full


class Channel:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue


class Fetcher:
    def __init__(self) -> None:
        self._stopped = asyncio.Event()


def consumer(records: list[Any]) -> Any:
    c = faust_drain.DrainingConsumer.__new__(faust_drain.DrainingConsumer)
    flow = SimpleNamespace(active=True)
    queue = Queue()
    c.app = SimpleNamespace(
        flow_control=SimpleNamespace(is_active=lambda: flow.active),
        producer=SimpleNamespace(buffer=SimpleNamespace(size=0, max_messages=100)),
        topics=SimpleNamespace(_tp_index={TPA: {Channel(queue)}},
                               _tp_to_callback_lock=asyncio.Lock(), acks_enabled_for=lambda topic: True))
    c.suspend_flow = asyncio.Event()
    c._stopped = asyncio.Event()
    c._read_offset = defaultdict(lambda: None)
    c._commit_every = None
    c._n_acked = 0
    c.diag = SimpleNamespace(set_flag=lambda f: None, unset_flag=lambda f: None)
    c.log = SimpleNamespace(info=print, exception=print)
    c.consumer_stopped_errors = ()
    c.transport = SimpleNamespace(app=SimpleNamespace(should_stop=False))
    c.gaps = []

    async def add_gap(tp: Any, start: int, end: int) -> None:
        c.gaps.append((start, end))
    c._add_gap = add_gap
    c.flow, c.queue = flow, queue
    c.delivered, c.waited = [], []

    async def callback(message: Any) -> None:
        c.delivered.append(message.offset)

    async def wait_first(*coros: Any) -> None:
        c.waited.append(len(c.delivered))
        await coros[0]
        coros[1].close()
    c.callback, c.wait_first = callback, wait_first

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(seconds)
    c.sleep = sleep
    c.should_stop = False

    async def getmany(**kwargs: Any) -> Any:  # timeout=1.0, as Faust calls it
        for record in records:
            yield TPA, record
        c._stopped.set()  # one fetch, then the loop ends
    c.getmany = getmany
    return c


def record(offset: int) -> Any:
    return SimpleNamespace(offset=offset, tp=TPA, topic="t")


def test_never_blocks__only_when_flow_buffer_lock_and_queues_allow() -> None:
    c = consumer([])
    assert c.never_blocks(record(0))
    c.queue.is_full = True
    assert not c.never_blocks(record(0))
    c.queue.is_full = False
    c.flow.active = False
    assert not c.never_blocks(record(0))
    c.flow.active = True
    c.suspend_flow.set()
    assert not c.never_blocks(record(0))
    c.suspend_flow.clear()
    c.app.producer.buffer.size = 101
    assert not c.never_blocks(record(0))
    c.app.producer.buffer.size = 0
    assert not c.never_blocks(SimpleNamespace(offset=0, tp=TP("t", 9), topic="t"))  # no channel: Faust's path


async def test_drain__records_delivered_in_order_a_full_queue_goes_through_wait_first_and_old_offsets_dropped() -> None:
    c = consumer([record(0), record(1), record(0), record(2), record(5)])
    real_callback = c.callback

    async def callback(message: Any) -> None:
        await real_callback(message)
        c.queue.is_full = message.offset == 1  # the queue fills after offset 1 was put
    c.callback = callback
    await c._drain_messages(Fetcher())
    # offset 0 again: below the read offset, dropped as Faust does
    assert c.delivered == [0, 1, 2, 5]
    assert c.waited == [2]  # offset 2 found the queue full: delivered through wait_first
    assert c.gaps == [(3, 5)]  # a gap in the offsets is recorded for the ack bookkeeping
