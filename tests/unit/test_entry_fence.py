"""A handler goes past a step only once the step's journal entry was applied under its actor's epoch.

The ack of an entry proves it is in the log, not that it counts: an
activation by another worker may precede it there, and that worker then runs
the step again. If the first actor went on meanwhile, the two executions could
part (one polls PENDING and sleeps, the other polls DONE and updates the feed):
two side effects under two idempotency keys.
"""

from __future__ import annotations

import asyncio
from typing import Any

from streamapp.durable import ObjectContext, Registry, Service
from streamapp.runtime.actors import ActorPool
from tests.unit.engine_fakes import EngineRig


class Log:
    """The internal topic as the actor sees it: commands sent, entries applied when the test says so."""

    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []
        self.sent = asyncio.Event()

    async def send(self, p: int, okey: str, cmd: dict[str, Any]) -> None:
        self.commands.append(cmd)
        self.sent.set()

    async def invoke(self, target: dict[str, Any], parent: str) -> None:
        raise AssertionError("no send expected")

    async def dead_letter(self, rec: dict[str, Any], error: str) -> None:
        raise AssertionError(f"no dead letter expected: {error}")


def pool_with_fence(svc: Service, log: Log) -> tuple[ActorPool, dict[tuple[str, int], asyncio.Future[bool]]]:
    pool = ActorPool(Registry([svc]), log.send, log.invoke, log.dead_letter, max_running=4)
    waiters: dict[tuple[str, int], asyncio.Future[bool]] = {}

    def expect(inv_id: str, index: int) -> asyncio.Future[bool]:
        waiters[(inv_id, index)] = asyncio.get_running_loop().create_future()
        return waiters[(inv_id, index)]

    pool.expect_entry = expect
    pool.forget_entry = lambda inv_id, index: waiters.pop((inv_id, index), None)  # type: ignore[assignment,func-returns-value]
    return pool, waiters


def record() -> dict[str, Any]:
    return {"id": "inv_1", "service": "Feed", "handler": "Post", "key": "u1", "payload": None, "attempt": 0,
            "journal": []}


def service(calls: list[str]) -> Service:
    feed = Service("Feed")

    @feed.handler()
    async def Post(ctx: ObjectContext) -> None:
        await ctx.run("create", lambda: calls.append("create"))
        await ctx.run("update", lambda: calls.append("update"))

    return feed


async def test_the_next_step_waits_for_the_entry_to_be_applied() -> None:
    calls: list[str] = []
    log = Log()
    pool, waiters = pool_with_fence(service(calls), log)
    pool.start(0, "e1", record(), {})
    await asyncio.wait_for(log.sent.wait(), 5)
    await asyncio.sleep(0.05)
    assert calls == ["create"], "the second step ran before the first entry was applied"
    task = next(iter(pool.tasks.values()))
    log.sent.clear()
    waiters[("inv_1", 0)].set_result(True)
    await asyncio.wait_for(log.sent.wait(), 5)  # the second entry
    assert calls == ["create", "update"]
    waiters[("inv_1", 1)].set_result(True)
    await asyncio.wait_for(task, 5)
    assert [c["op"] for c in log.commands] == ["entry", "entry", "complete"]


async def test_an_entry_refused_under_another_epoch_stops_the_handler_before_its_next_step() -> None:
    calls: list[str] = []
    log = Log()
    pool, waiters = pool_with_fence(service(calls), log)
    pool.start(0, "e1", record(), {})
    await asyncio.wait_for(log.sent.wait(), 5)
    waiters[("inv_1", 0)].set_result(False)
    await asyncio.wait(set(pool.tasks.values()), timeout=5)
    assert calls == ["create"]
    assert [c["op"] for c in log.commands] == ["entry"], "no outcome from an actor whose entry did not count"
    assert not waiters


async def test_engine__resolves_the_waiter_true_when_applied_and_false_for_a_stale_epoch() -> None:
    rig = EngineRig()
    epoch = rig.activate(0)
    rig.apply(0, {"op": "invoke", "id": "inv_1", "service": "Feed", "handler": "Post", "key": "u1",
                  "payload": None, "not_before": None, "source": None})
    applied = rig.engine.expect_entry("inv_1", 0)
    rig.apply(0, {"op": "entry", "id": "inv_1", "epoch": epoch, "index": 0, "attempt": 1,
                  "entry": {"t": "run", "name": "create", "value": None}})
    assert applied.result() is True
    stale = rig.engine.expect_entry("inv_1", 1)
    rig.apply(0, {"op": "activate", "epoch": "other", "at": 0.0})  # another worker took the partition
    rig.apply(0, {"op": "entry", "id": "inv_1", "epoch": epoch, "index": 1, "attempt": 1,
                  "entry": {"t": "run", "name": "update", "value": None}})
    assert stale.result() is False
