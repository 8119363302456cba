"""Steps pipelined by one: an attempt's outcome rides in its last entry's record; no step acts early.

The outbox is the real one over a fake producer that records each record
(``test_outbox_batching.Producer``); entries are applied, or refused, when
the test says so, as the invocations agent would decide them.
"""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

from streamapp.durable import ObjectContext, Registry, Service
from streamapp.runtime import commands
from streamapp.runtime.actors import ActorPool
from streamapp.runtime.limits import Limits
from tests.unit.test_outbox_batching import Producer, outbox


class Rig:
    def __init__(self, svc: Service, refuse_over: int | None = None, decide: bool | None = True) -> None:
        """``decide``: how every entry is decided at its ack (None: the test decides)."""
        self.producer = Producer(refuse_over)
        self.box = outbox(self.producer)
        self.dead: list[str] = []
        self.pool = ActorPool(Registry([svc]), self.box.send, self.box.invoke, self._dead_letter, max_running=4)
        self.pool.enqueue = self.box.enqueue
        self.waiters: dict[tuple[str, int], asyncio.Future[bool]] = {}
        self.pool.expect_entry = self._expect
        self.pool.forget_entry = lambda inv_id, index: None  # type: ignore[assignment]
        self.decide = decide
        self.box.on_durable = self._durable

    async def _dead_letter(self, rec: dict[str, Any], error: str) -> None:
        self.dead.append(error)

    def _expect(self, inv_id: str, index: int) -> asyncio.Future[bool]:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.waiters[(inv_id, index)] = fut
        return fut

    def _durable(self, p: int, offset: int, value: bytes, ops: list[str]) -> None:
        for cmd in commands.unpack(json.loads(value)):
            fut = self.waiters.get((cmd["id"], cmd.get("index", -1)))
            if cmd["op"] == "entry" and fut is not None and not fut.done() and self.decide is not None:
                fut.set_result(self.decide)

    def records(self) -> list[list[str]]:
        """Each record's commands as ``op`` or ``op#index``, in order."""
        return [[c["op"] + (f"#{c['index']}" if c["op"] == "entry" else "")
                 for c in commands.unpack(json.loads(v))] for _, _, v in self.producer.records]

    async def run(self, rec: dict[str, Any]) -> None:
        self.pool.start(0, "e1", rec, {})
        await asyncio.wait(set(self.pool.tasks.values()), timeout=5)
        assert not self.pool.tasks


def record(handler: str) -> dict[str, Any]:
    return {"id": "inv_1", "service": "Feed", "handler": handler, "key": "u1", "payload": None, "attempt": 0,
            "journal": []}


def service(calls: list[str]) -> Service:
    feed = Service("Feed")

    @feed.handler()
    async def One(ctx: ObjectContext) -> str:
        value = await ctx.run("create", lambda: calls.append("create") or "p1")
        ctx.set("last", value)
        return value

    @feed.handler()
    async def Two(ctx: ObjectContext) -> None:
        await ctx.run("create", lambda: calls.append("create"))
        calls.append("between")
        await ctx.run("update", lambda: calls.append("update"))

    @feed.handler()
    async def Nap(ctx: ObjectContext) -> None:
        await ctx.run("create", lambda: calls.append("create"))
        await ctx.sleep(60)

    @feed.handler()
    async def Big(ctx: ObjectContext) -> None:
        await ctx.run("create", lambda: "x" * 5000)

    return feed


async def test_the_outcome_rides_in_the_record_of_the_last_entry() -> None:
    calls: list[str] = []
    rig = Rig(service(calls))
    await rig.run(record("One"))
    assert calls == ["create"]
    assert rig.records() == [["entry#0", "complete"]]


async def test_a_sleep_and_its_suspension_share_a_record() -> None:
    calls: list[str] = []
    rig = Rig(service(calls))
    await rig.run(record("Nap"))
    assert rig.records() == [["entry#0"], ["entry#1", "suspend"]]


async def test_the_next_step_acts_only_once_the_previous_entry_counts() -> None:
    calls: list[str] = []
    rig = Rig(service(calls), decide=None)
    rig.pool.start(0, "e1", record("Two"), {})
    for _ in range(50):
        await asyncio.sleep(0)
    # The handler's own code went on; the second step's function did not run, its entry was not sent.
    assert calls == ["create", "between"]
    assert rig.records() == [["entry#0"]]
    rig.waiters[("inv_1", 0)].set_result(True)
    for _ in range(50):
        await asyncio.sleep(0)
    assert calls == ["create", "between", "update"]
    rig.waiters[("inv_1", 1)].set_result(True)
    await asyncio.wait(set(rig.pool.tasks.values()), timeout=5)
    assert rig.records() == [["entry#0"], ["entry#1", "complete"]]


async def test_an_entry_that_does_not_count_stops_the_actor_with_its_glued_outcome_refused_alike() -> None:
    calls: list[str] = []
    rig = Rig(service(calls), decide=False)
    await rig.run(record("Two"))
    assert calls == ["create", "between"], "no step after an entry refused under another epoch"
    assert rig.records() == [["entry#0"]]
    assert not rig.dead


async def test_an_entry_refused_as_too_large_takes_its_glued_outcome_with_it() -> None:
    # The limits read say the commands fit; the broker refuses records over 3,000 bytes.
    calls: list[str] = []
    rig = Rig(service(calls), refuse_over=3000)
    rig.box.limits = Limits()
    await rig.run(record("Big"))
    assert rig.dead and rig.dead[0].startswith("TooLargeError"), rig.dead
    ops = rig.records()
    assert ops == [["fail"]], "the complete glued to the refused entry must not be sent on its own"


async def test_a_glued_outcome_failing_with_its_entry_leaves_no_unretrieved_error() -> None:
    """The actor stops waiting at the entry's error; the outcome's same error is not "never retrieved"."""
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    try:
        rig = Rig(service([]), refuse_over=3000)
        rig.box.limits = Limits()
        await rig.run(record("Big"))
        assert rig.dead
        gc.collect()  # a future with an error nobody retrieved reports it when collected
    finally:
        loop.set_exception_handler(None)
    assert [c.get("message") for c in unretrieved] == []
