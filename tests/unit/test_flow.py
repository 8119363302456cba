"""Flow control: the sources wait above the bound, but never while their stream buffer is full.

Faust delivers the records it fetched before a pause even when the agent's
buffer is full, and then its delivery waits for every partition of the
consumer, the internal topic too: a sources agent held there would stop
the invocations agent that alone can bring pending work down.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from streamapp.runtime import flow
from streamapp.runtime.flow import FlowControl


def control(pending: list[int], bound: int = 10) -> FlowControl:
    engine: Any = SimpleNamespace(live_partitions=lambda: {0}, applied={0: -1}, pending_count=lambda: pending[0])
    return FlowControl(engine, lambda tp: None, lambda: "t", {}, bound)


async def test_admit__waits_above_the_bound_until_pending_falls_to_half() -> None:
    pending = [11]
    fc = control(pending)
    admitted = asyncio.ensure_future(fc.admit())
    await asyncio.sleep(3 * flow.FULL_CHECK)
    assert not admitted.done()
    pending[0] = 5
    fc.tick()
    await asyncio.wait_for(admitted, 1)


async def test_admit__goes_on_while_the_agents_buffer_is_full() -> None:
    pending = [11]
    fc = control(pending)
    full = [False]
    admitted = asyncio.ensure_future(fc.admit(lambda: full[0]))
    await asyncio.sleep(3 * flow.FULL_CHECK)
    assert not admitted.done()
    full[0] = True  # Faust's delivery now waits on this buffer, for every partition
    await asyncio.wait_for(admitted, 1)
    assert not fc.capacity.is_set()  # still paused: the next batch waits again once there is room
    full[0] = False
    again = asyncio.ensure_future(fc.admit(lambda: full[0]))
    await asyncio.sleep(3 * flow.FULL_CHECK)
    assert not again.done()
    again.cancel()


def test_backlog__counts_commands_sent_but_not_fetched_yet() -> None:
    engine: Any = SimpleNamespace(live_partitions=lambda: {0, 1}, applied={0: 4, 1: -1}, pending_count=lambda: 0)
    highwater = {TP("t", 0): 6, TP("t", 1): None}  # the consumer saw offsets up to 5 of partition 0
    fc = FlowControl(engine, highwater.get, lambda: "t", {0: 9, 1: 2}, 100)
    assert fc.backlog() == (9 - 4) + (2 - -1)


def test_backlog__a_batch_record_counts_as_the_commands_it_holds() -> None:
    from collections import deque

    engine: Any = SimpleNamespace(live_partitions=lambda: {0}, applied={0: 4}, pending_count=lambda: 0)
    extra = {0: deque([(6, 99), (3, 50), (5, 9)]), 7: deque([(1, 5)])}  # acked in any order; 7: not led here
    fc = FlowControl(engine, lambda tp: None, lambda: "t", {0: 6}, 100, extra)
    assert fc.backlog() == (6 - 4) + 99 + 9  # offset 3 is applied: its batch no longer counts
    assert list(extra[0]) == [(6, 99), (5, 9)] and 7 not in extra
