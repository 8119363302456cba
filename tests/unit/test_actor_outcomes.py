"""ActorPool turns an attempt's outcome into the command the invocations agent applies."""

from __future__ import annotations

import asyncio
from typing import Any

from streamapp.durable import ObjectContext, Registry, Service
from streamapp.runtime.actors import ActorPool


class Recorder:
    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []
        self.dead: list[tuple[str, str]] = []

    async def send(self, p: int, okey: str, cmd: dict[str, Any]) -> None:
        self.commands.append(cmd)

    async def invoke(self, target: dict[str, Any], parent: str) -> None:
        raise AssertionError("no send expected")

    async def dead_letter(self, rec: dict[str, Any], error: str) -> None:
        self.dead.append((rec["id"], error))


def record(journal: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": "inv_1", "service": "Shop", "handler": "Order", "key": "k", "payload": None,
            "attempt": 0, "journal": journal}


async def run_one(svc: Service, journal: list[dict[str, Any]]) -> Recorder:
    out = Recorder()
    pool = ActorPool(Registry([svc]), out.send, out.invoke, out.dead_letter, max_running=4)
    pool.start(0, "e1", record(journal), {})
    await asyncio.gather(*pool.tasks.values())
    return out


async def test_outcome__handler_changed_under_its_journal_pauses_without_a_dead_letter() -> None:
    shop = Service("Shop")

    @shop.handler()
    async def Order(ctx: ObjectContext) -> None:
        await ctx.run("bill", lambda: 1)  # the journal says the step was called "charge"

    out = await run_one(shop, [{"t": "run", "name": "charge", "value": 1}])

    assert out.dead == []
    [cmd] = out.commands
    assert cmd["op"] == "fail" and cmd["pause"] is True and cmd["id"] == "inv_1" and cmd["epoch"] == "e1"
    assert cmd["error"].startswith("NonDeterminismError") and "'charge'" in cmd["error"]


async def test_outcome__steps_in_a_gather_fail_and_are_dead_lettered() -> None:
    shop = Service("Shop")

    @shop.handler()
    async def Order(ctx: ObjectContext) -> None:
        await asyncio.gather(ctx.run("a", lambda: 1), ctx.run("b", lambda: 2))

    out = await run_one(shop, [])

    [cmd] = out.commands
    assert cmd["op"] == "fail" and cmd["pause"] is False
    assert cmd["error"].startswith("ConcurrentStepError")
    assert out.dead == [("inv_1", cmd["error"])]
