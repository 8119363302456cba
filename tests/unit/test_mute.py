"""Prints and logs of a handler are muted while it replays journaled steps.

A recovered invocation must not print "Created post" twice: whatever a
handler prints, it prints once, however often it is re-executed.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Iterator

import pytest
from replay_harness import MODES, run_invocation

from streamapp.durable import ObjectContext, Service, mute
from streamapp.durable.service import Handler

pytestmark = pytest.mark.parametrize("mode", MODES)


@contextlib.contextmanager
def muted_stdout() -> Iterator[io.StringIO]:
    """Route stdout through the mute, as ``mute.install`` does; yield what gets through.

    (Not a fixture: pytest re-installs its own sys.stdout between setup and call.)
    """
    out = io.StringIO()
    with contextlib.redirect_stdout(mute._MutableStream(out)):  # type: ignore[type-var]
        yield out


def _handler() -> Handler:
    svc = Service("Chatty")

    @svc.handler()
    async def Talk(ctx: ObjectContext) -> None:
        print("start")
        post = await ctx.run("create", lambda: print("creating") or "post-1")
        print(f"created {post}")
        await ctx.sleep(5)
        print("woke up")
        await ctx.run("update", lambda: print("updating"))
        print("done")

    return svc.handlers["Talk"]


async def test_mute__each_print_appears_once_however_often_the_handler_replays(mode: str) -> None:
    with muted_stdout() as stdout:
        run = await run_invocation(_handler(), mode)

    assert run.executions > 1  # it really was re-executed (after the sleep, at least)
    assert stdout.getvalue().splitlines() == ["start", "creating", "created post-1", "woke up", "updating", "done"]


async def test_mute__prints_of_live_steps_after_a_full_replay_are_not_muted(mode: str) -> None:
    journal = [
        {"t": "run", "name": "create", "value": "post-1"},
        {"t": "sleep", "name": "sleep", "wake_at": 0.0, "fired": True},
    ]

    with muted_stdout() as stdout:
        await run_invocation(_handler(), mode, journal=journal)

    assert stdout.getvalue().splitlines() == ["woke up", "updating", "done"]


async def test_mute__replaying_flag_is_reset_after_the_attempt(mode: str) -> None:
    journal = [{"t": "run", "name": "create", "value": "post-1"}]

    with muted_stdout() as stdout:
        await run_invocation(_handler(), mode, journal=journal)
        print("after the invocation")

    assert mute.replaying.get() is False
    assert stdout.getvalue().splitlines()[-1] == "after the invocation"


async def test_mute__handler_logs_are_filtered_during_replay(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("tests.unit.chatty")
    svc = Service("Chatty")

    @svc.handler()
    async def Talk(ctx: ObjectContext) -> None:
        log.warning("step=before")
        await ctx.run("one", lambda: None)
        log.warning("step=between")
        await ctx.run("two", lambda: None)
        log.warning("step=after")

    caplog.handler.addFilter(mute.ReplayFilter())
    with caplog.at_level(logging.WARNING, logger="tests.unit.chatty"):
        await run_invocation(svc.handlers["Talk"], mode)

    assert [r.getMessage() for r in caplog.records] == ["step=before", "step=between", "step=after"]


async def test_mute__another_invocation_running_at_the_same_time_still_prints(mode: str) -> None:
    gate = asyncio.Event()
    svc = Service("Chatty")

    @svc.handler()
    async def Replayer(ctx: ObjectContext) -> None:
        await gate.wait()  # parked here while replaying its journaled step
        print("replayer: muted")
        await ctx.run("one", lambda: None)

    @svc.handler()
    async def Live(ctx: ObjectContext) -> None:
        print("live: printed")
        gate.set()

    journal = [{"t": "run", "name": "one", "value": None}]
    with muted_stdout() as stdout:
        await asyncio.gather(
            run_invocation(svc.handlers["Replayer"], mode, journal=journal, invocation_id="inv_r"),
            run_invocation(svc.handlers["Live"], mode, invocation_id="inv_l"),
        )

    assert stdout.getvalue().splitlines() == ["live: printed"]
