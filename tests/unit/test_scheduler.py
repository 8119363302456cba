"""The in-memory timer index: fires due timers in deadline order, never early, retries failed fires."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from streamapp.runtime.scheduler import Scheduler

UNTIL = 10.0  # seconds


class Fires:
    """Records every fire (partition, epoch, id, time), the timer each names, and can fail chosen ids once."""

    def __init__(self, fail_once: set[str] | None = None) -> None:
        self.calls: list[tuple[int, str, str, float]] = []
        self.named: list[float] = []  # the wake-up time each fire names (what makes a late copy stale)
        self.fail_once = set(fail_once or ())

    async def __call__(self, p: int, epoch: str, inv_id: str, wake_at: float) -> None:
        self.calls.append((p, epoch, inv_id, time.time()))
        self.named.append(wake_at)
        if inv_id in self.fail_once:
            self.fail_once.discard(inv_id)
            raise ConnectionError("broker unavailable")

    def ids(self) -> list[str]:
        return [c[2] for c in self.calls]

    async def until(self, check: Callable[[], bool]) -> None:
        """Wait for ``check``; the bound is one only a stuck scheduler misses."""
        async with asyncio.timeout(UNTIL):
            while not check():  # noqa: ASYNC110 - the condition belongs to the scheduler
                await asyncio.sleep(0.01)


async def stop(task: asyncio.Task[None]) -> None:
    # Cancelled again until it ends: on Python 3.11, asyncio.wait_for drops a cancel
    # that arrives as the scheduler's wake-up event is set (add/drop_partitions).
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)


@pytest.fixture
async def fires() -> Fires:
    return Fires()


@pytest.fixture
async def scheduler(fires: Fires) -> AsyncIterator[Scheduler]:
    sched = Scheduler(fires)
    task = asyncio.get_running_loop().create_task(sched.run())
    await asyncio.sleep(0)  # let it start waiting
    yield sched
    await stop(task)


async def test_scheduler__due_timers_fire_in_deadline_order_and_never_early(scheduler: Scheduler, fires: Fires) -> None:
    now = time.time()
    deadlines = {"c": now + 0.6, "a": now + 0.2, "b": now + 0.4, "past": now - 5.0}
    for inv_id, wake_at in deadlines.items():
        scheduler.add(0, "e1", inv_id, wake_at)

    await fires.until(lambda: len(fires.calls) == 4)

    assert fires.ids() == ["past", "a", "b", "c"]
    for _, _, inv_id, fired_at in fires.calls:
        assert fired_at >= deadlines[inv_id], f"{inv_id} fired {deadlines[inv_id] - fired_at:.3f}s early"
    assert scheduler.total() == 0 and scheduler.count(0) == 0


async def test_scheduler__an_earlier_timer_added_while_waiting_fires_first(scheduler: Scheduler, fires: Fires) -> None:
    scheduler.add(0, "e1", "later", time.time() + 3600)
    await asyncio.sleep(0.05)  # the loop is now waiting for the hour-long timer
    scheduler.add(0, "e1", "sooner", time.time() + 0.1)

    await fires.until(lambda: len(fires.calls) == 1)

    assert fires.ids() == ["sooner"]
    assert scheduler.total() == 1 and scheduler.count(0) == 1


async def test_scheduler__many_due_at_once_each_fire_once_oldest_first_with_their_partition_and_epoch(
    scheduler: Scheduler, fires: Fires
) -> None:
    now = time.time()
    wake = {f"inv{i}": now - 2.0 + ((i * 7919) % 2000) / 2000 for i in range(2000)}  # all due, shuffled
    expected = {(i % 4, f"epoch-{i % 4}", f"inv{i}") for i in range(2000)}
    for p, epoch, inv_id in expected:
        scheduler.add(p, epoch, inv_id, wake[inv_id])
    assert sum(scheduler.count(p) for p in range(4)) == 2000

    await fires.until(lambda: len(fires.calls) >= 2000)
    await asyncio.sleep(0.1)  # nothing more comes

    assert len(fires.calls) == 2000
    assert {(p, epoch, inv_id) for p, epoch, inv_id, _ in fires.calls} == expected
    assert fires.ids() == sorted(wake, key=wake.__getitem__)
    assert scheduler.total() == 0 and all(scheduler.count(p) == 0 for p in range(4))


async def test_scheduler__a_failed_fire_is_added_back_and_fired_again() -> None:
    fires = Fires(fail_once={"flaky"})
    sched = Scheduler(fires)
    armed = time.time() - 1.0
    sched.add(2, "e7", "flaky", armed)
    sched.add(2, "e7", "fine", armed)
    task = asyncio.get_running_loop().create_task(sched.run())
    try:
        await fires.until(lambda: len(fires.calls) == 2 and sched.total() == 1)
        assert sched.count(2) == 1 and len(fires.calls) == 2  # the failed one waits for its retry

        await fires.until(lambda: len(fires.calls) == 3)
    finally:
        await stop(task)

    assert sorted(fires.ids()[:2]) == ["fine", "flaky"] and fires.ids()[2] == "flaky"
    assert fires.calls[2][:2] == (2, "e7")  # retried for the same partition and epoch
    assert fires.named == [armed, armed, armed], "a retried fire still names the timer it fires"
    assert sched.total() == 0 and sched.count(2) == 0


async def test_scheduler__dropped_partitions_never_fire_and_others_do(scheduler: Scheduler, fires: Fires) -> None:
    soon = time.time() + 0.3
    for p in range(3):
        scheduler.add(p, "e1", f"inv-p{p}", soon)
    scheduler.drop_partitions({0, 2})
    assert scheduler.total() == 1 and scheduler.count(0) == scheduler.count(2) == 0

    await fires.until(lambda: len(fires.calls) == 1)
    await asyncio.sleep(0.3)

    assert fires.ids() == ["inv-p1"]


async def test_scheduler__a_timer_re_added_under_a_new_epoch_fires_with_that_epoch(
    scheduler: Scheduler, fires: Fires
) -> None:
    # A partition re-activated: its timers are dropped and added again under the new epoch.
    wake_at = time.time() + 0.3
    scheduler.add(1, "old", "inv", wake_at)
    scheduler.drop_partitions({1})
    scheduler.add(1, "new", "inv", wake_at)

    await fires.until(lambda: len(fires.calls) == 1)
    await asyncio.sleep(0.3)

    assert [(p, epoch, inv_id) for p, epoch, inv_id, _ in fires.calls] == [(1, "new", "inv")]
