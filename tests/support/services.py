"""Services used by integration tests (loaded by workers via STREAMAPP_SERVICES).

Side effects are appended to a JSON-lines ledger (STREAMAPP_TEST_LEDGER) so a
test can count how often each step really ran, where and when. A handler that
must stay busy until the test has seen what it needs waits on a gate (a file
the test creates), not for a number of seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from typing import Any

from streamapp.durable import ObjectContext, RetryPolicy, Service, SharedContext, TerminalError


def record(**fields: Any) -> None:
    path = os.environ["STREAMAPP_TEST_LEDGER"]
    line = json.dumps({**fields, "time": time.time(), "pid": os.getpid()})
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def ledger(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


@dataclasses.dataclass
class NapRequest:
    tag: str
    seconds: float = 0.0  # durable sleep between the two steps
    work: float = 0.0     # plain (non-durable) work between the steps
    gate: str = ""        # then (non-durably) wait until the test creates this file


async def wait_at_gate(path: str) -> None:
    # A stat of a local file, polled: the gate is a file another process creates.
    while not os.path.exists(path):  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(0.05)


@dataclasses.dataclass
class Fail:
    tag: str
    failures: int = 0  # attempts that fail before one succeeds (-1: always)


test = Service("Test", retry=RetryPolicy(initial_interval=0.2, factor=2.0, max_interval=1.0, max_attempts=4))
paused = Service("Paused", retry=RetryPolicy(initial_interval=0.1, max_attempts=2, on_exhausted="pause"))
slow_retry = Service("SlowRetry", retry=RetryPolicy(initial_interval=3.0, factor=1.0, max_attempts=3))


@test.handler()
async def Nap(ctx: ObjectContext, req: NapRequest) -> dict[str, Any]:
    inv = ctx.invocation_id
    started = await ctx.run(
        "before", lambda: record(event="before", key=ctx.key, tag=req.tag, inv=inv) or time.time()
    )
    if req.seconds:
        await ctx.sleep(req.seconds)
    if req.work:
        await asyncio.sleep(req.work)
    if req.gate:
        await wait_at_gate(req.gate)
    await ctx.run("after", lambda: record(event="after", key=ctx.key, tag=req.tag, inv=inv, started=started))
    count = ctx.get("count", 0) + 1
    ctx.set("count", count)
    return {"tag": req.tag, "count": count}


def _attempts(inv: str) -> int:
    entries = ledger(os.environ["STREAMAPP_TEST_LEDGER"])
    return sum(1 for e in entries if e.get("inv") == inv and e["event"] == "attempt")


@test.handler()
async def Flaky(ctx: ObjectContext, req: Fail) -> str:
    inv = ctx.invocation_id
    record(event="attempt", key=ctx.key, tag=req.tag, inv=inv)
    if req.failures < 0 or _attempts(inv) <= req.failures:
        raise RuntimeError(f"flaky failure of {req.tag}")
    await ctx.run("done", lambda: record(event="after", key=ctx.key, tag=req.tag, inv=inv))
    return "ok"


@test.handler()
async def Terminal(ctx: ObjectContext, req: Fail) -> None:
    raise TerminalError(f"cannot process {req.tag}")


@dataclasses.dataclass
class FixableRequest:
    tag: str
    fixed: str  # a file: until it exists the handler fails for good (a bug an operator fixes, then replays)


@test.handler()
async def Fixable(ctx: ObjectContext, req: FixableRequest) -> str:
    inv = ctx.invocation_id
    if not await asyncio.to_thread(os.path.exists, req.fixed):
        raise TerminalError(f"not fixed yet: {req.tag}")
    await ctx.run("work", lambda: record(event="after", key=ctx.key, tag=req.tag, inv=inv))
    return f"fixed {req.tag}"


@test.handler()
async def Drift(ctx: ObjectContext, req: Fail) -> None:
    """Non-deterministic: the step name changes between executions."""
    inv = ctx.invocation_id
    record(event="attempt", key=ctx.key, tag=req.tag, inv=inv)
    await ctx.run(f"step-{_attempts(inv)}", lambda: None)
    await ctx.sleep(0.2)
    await ctx.run("end", lambda: None)


@test.handler()
async def DriftOnce(ctx: ObjectContext, req: Fail) -> str:
    """Its second execution names its first step differently: a bad deploy, then the rollback.

    The first execution journals ``step-a`` and sleeps; the second (the timer
    fired) asks for ``step-b`` and pauses; a third (after a resume) matches again.
    """
    inv = ctx.invocation_id
    record(event="attempt", key=ctx.key, tag=req.tag, inv=inv)
    await ctx.run("step-b" if _attempts(inv) == 2 else "step-a", lambda: None)
    await ctx.sleep(0.2)
    await ctx.run("end", lambda: record(event="after", key=ctx.key, tag=req.tag, inv=inv))
    return "resumed"


@dataclasses.dataclass
class RelayRequest:
    tag: str
    to: str = ""    # key of the Test/Receive invocation it sends (none when empty)
    gate: str = ""  # a file the handler waits for, not durably, after the send (a test opens it)


async def wait_gate(path: str) -> None:
    """Wait until the test creates ``path`` (polled: a file gives nothing to await)."""
    while path:
        if await asyncio.to_thread(os.path.exists, path):
            return
        await asyncio.sleep(0.05)


@test.handler()
async def Relay(ctx: ObjectContext, req: RelayRequest) -> str | None:
    """``ctx.send`` to Test/Receive, then wait at a gate, then one step: a kill can land between them."""
    inv = ctx.invocation_id
    sent = await ctx.send("Test", req.to, "Receive", {"tag": req.tag}) if req.to else None
    await wait_gate(req.gate)
    await ctx.run("after", lambda: record(event="after", key=ctx.key, tag=req.tag, inv=inv, sent=sent))
    return sent


@test.handler()
async def Receive(ctx: ObjectContext, req: NapRequest) -> str:
    inv = ctx.invocation_id
    await ctx.run("received", lambda: record(event="received", key=ctx.key, tag=req.tag, inv=inv))
    return inv


@dataclasses.dataclass
class TickRequest:
    n: int
    work: float = 0.0


@test.handler()
async def Tick(ctx: ObjectContext, req: TickRequest) -> int:
    """A slow, stepless handler: counts its invocations in state."""
    if req.work:
        await asyncio.sleep(req.work)
    ticks: int = ctx.get("ticks", 0) + 1
    ctx.set("ticks", ticks)
    ctx.set("last", req.n)
    return ticks


@test.handler(kind="shared")
async def Ticks(ctx: SharedContext) -> dict[str, int]:
    return {"ticks": ctx.get("ticks", 0), "last": ctx.get("last", -1)}


@test.handler(kind="shared")
async def Count(ctx: SharedContext) -> int:
    value: int = ctx.get("count", 0)
    return value


@test.handler()
async def Renamed(ctx: ObjectContext, req: NapRequest) -> dict[str, Any]:
    """Nap whose first step is named by STREAMAPP_TEST_STEP_NAME: a deploy can rename it."""
    inv = ctx.invocation_id
    step = os.environ.get("STREAMAPP_TEST_STEP_NAME", "before")
    await ctx.run(step, lambda: record(event="before", key=ctx.key, tag=req.tag, inv=inv, step=step))
    await ctx.sleep(req.seconds)
    await ctx.run("after", lambda: record(event="after", key=ctx.key, tag=req.tag, inv=inv))
    return {"tag": req.tag, "step": step}


@dataclasses.dataclass
class AppendRequest:
    n: int
    work: float = 0.0  # plain (non-durable) work before the append


@test.handler()
async def Append(ctx: ObjectContext, req: AppendRequest) -> list[int]:
    """Appends ``n`` to the key's list ``seen``: the state shows every event once, in the order they ran."""
    inv = ctx.invocation_id
    if req.work:
        await asyncio.sleep(req.work)
    await ctx.run("append", lambda: record(event="append", key=ctx.key, n=req.n, inv=inv))
    seen: list[int] = [*ctx.get("seen", []), req.n]
    ctx.set("seen", seen)
    return seen


@test.handler(kind="shared")
async def Seen(ctx: SharedContext) -> list[int]:
    seen: list[int] = ctx.get("seen", [])
    return seen


@paused.handler()
async def Stuck(ctx: ObjectContext, req: Fail) -> str:
    inv = ctx.invocation_id
    record(event="attempt", key=ctx.key, tag=req.tag, inv=inv)
    if req.failures < 0 or _attempts(inv) <= req.failures:
        raise RuntimeError("still failing")
    return "unstuck"


@slow_retry.handler()
async def Flaky(ctx: ObjectContext, req: Fail) -> str:  # noqa: F811 - same handler name, another service
    inv = ctx.invocation_id
    record(event="attempt", key=ctx.key, tag=req.tag, inv=inv)
    if _attempts(inv) <= req.failures:
        raise RuntimeError(f"flaky failure of {req.tag}")
    return "ok"


services = [test, paused, slow_retry]
