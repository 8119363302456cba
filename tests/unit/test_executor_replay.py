"""The executor when a handler no longer matches its journal, or runs steps concurrently.

A code change under an invocation in flight (a step renamed, added, removed
or reordered) pauses it: nothing is dead-lettered, the journal is kept, and
the restored code finishes it. Steps started from another asyncio task fail
the invocation, live and in replay alike.

Every test runs straight through and in always-replay mode (see replay_harness).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from replay_harness import MODES, START, FakeClock, Run, run_invocation
from test_executor import Counter, handler_of

from streamapp.durable import NonDeterminismError, ObjectContext, TerminalError
from streamapp.durable.executor import Completed, Failed, Paused

pytestmark = pytest.mark.parametrize("mode", MODES)


def paused_error(run: Run) -> str:
    assert isinstance(run.outcome, Paused), f"invocation did not pause: {run.outcome}"
    return run.outcome.error


class AsyncCounter(Counter):
    """A step function that gives the loop a turn before it returns, as a real call does."""

    async def __call__(self) -> Any:  # type: ignore[override]
        await asyncio.sleep(0)
        return super().__call__()


# -- a code change under an invocation in flight --------------------------------


async def test_replay__changed_step_name_pauses_naming_both_steps(mode: str) -> None:
    async def V1(ctx: ObjectContext) -> None:
        await ctx.run("reserve", lambda: 1)
        await ctx.run("charge", lambda: 2)

    async def V2(ctx: ObjectContext) -> None:
        await ctx.run("reserve", lambda: 1)
        await ctx.run("bill", lambda: 2)

    first = await run_invocation(handler_of(V1), mode)
    run = await run_invocation(handler_of(V2), mode, journal=first.journal)

    error = paused_error(run)
    assert error.startswith("NonDeterminismError: non-deterministic replay at step 1")
    assert "run 'charge'" in error and "run 'bill'" in error
    assert len(run.history) == 1  # not retried
    assert run.journal == first.journal  # kept for the resume


async def test_replay__sleep_where_journal_has_a_step_pauses(mode: str) -> None:
    async def V2(ctx: ObjectContext) -> None:
        await ctx.sleep(1)

    run = await run_invocation(handler_of(V2), mode, journal=[{"t": "run", "name": "reserve", "value": 1}])

    error = paused_error(run)
    assert "run 'reserve'" in error and "sleep 'sleep'" in error


async def test_replay__handler_that_skips_journaled_steps_pauses_instead_of_completing(mode: str) -> None:
    async def V2(ctx: ObjectContext) -> str:
        await ctx.run("reserve", lambda: 1)
        return "done"

    journal = [{"t": "run", "name": "reserve", "value": 1}, {"t": "run", "name": "charge", "value": 2}]
    run = await run_invocation(handler_of(V2), mode, journal=journal)

    error = paused_error(run)
    assert error.startswith("NonDeterminismError: non-deterministic replay at step 1")
    assert "run 'charge'" in error


async def test_replay__handler_depending_on_unjournaled_randomness_is_caught_in_always_replay(mode: str) -> None:
    # A handler that branches on a value it did not journal: straight through it
    # looks fine; always-replay re-executes it with a different value and trips.
    values = iter(range(100))

    async def Flaky(ctx: ObjectContext) -> None:
        name = "even" if next(values) % 2 == 0 else "odd"
        await ctx.run(name, lambda: None)
        await ctx.run("after", lambda: None)

    run = await run_invocation(handler_of(Flaky), mode)

    if mode == "straight":
        assert isinstance(run.outcome, Completed)
    else:
        assert paused_error(run).startswith("NonDeterminismError")


async def test_replay__step_renamed_under_a_sleeper_pauses_it_and_the_restored_code_finishes_it(mode: str) -> None:
    reserve, charge, charge_renamed = Counter("r"), Counter("c"), Counter("c2")

    async def V1(ctx: ObjectContext) -> str:
        await ctx.run("reserve", reserve)
        await ctx.sleep(60)
        return await ctx.run("charge", charge)

    async def V2(ctx: ObjectContext) -> str:  # the deploy renamed the first step
        await ctx.run("reserve-stock", reserve)
        await ctx.sleep(60)
        return await ctx.run("charge", charge_renamed)

    # V1 ran its first step and slept; the timer fired after V2 was deployed.
    journal = [{"t": "run", "name": "reserve", "value": "r"},
               {"t": "sleep", "name": "sleep", "wake_at": START + 60, "fired": True}]
    clock = FakeClock(START + 61)
    paused = await run_invocation(handler_of(V2), mode, journal=journal, clock=clock)

    assert "run 'reserve'" in paused_error(paused) and "run 'reserve-stock'" in paused_error(paused)
    assert paused.journal == journal
    assert (reserve.calls, charge_renamed.calls) == (0, 0)  # no step ran under the new code

    # Rolled back, then resumed: the invocation goes on from its journal.
    resumed = await run_invocation(handler_of(V1), mode, journal=paused.journal, clock=clock)

    assert resumed.result == "c"
    assert (reserve.calls, charge.calls) == (0, 1)


async def test_replay__handler_that_catches_the_non_determinism_error_is_paused_all_the_same(mode: str) -> None:
    after = Counter()

    async def V2(ctx: ObjectContext) -> str:
        try:
            await ctx.run("bill", lambda: 2)
        except Exception:  # a broad handler-level catch must not turn divergence into success
            pass
        try:
            await ctx.run("after", after)
        except NonDeterminismError:
            return "swallowed"
        return "done"

    run = await run_invocation(handler_of(V2), mode, journal=[{"t": "run", "name": "charge", "value": 2}])

    assert "run 'charge'" in paused_error(run) and "run 'bill'" in paused_error(run)
    assert after.calls == 0
    assert not run.sent and run.state == {}


# -- concurrent steps ----------------------------------------------------------


async def test_concurrent_steps__gather_of_two_runs_fails_before_either_step_runs(mode: str) -> None:
    first, second = AsyncCounter(1), AsyncCounter(2)

    async def Both(ctx: ObjectContext) -> list[int]:
        return list(await asyncio.gather(ctx.run("first", first), ctx.run("second", second)))

    run = await run_invocation(handler_of(Both), mode)

    assert isinstance(run.outcome, Failed) and not run.outcome.exhausted
    assert run.error.startswith("ConcurrentStepError: ctx.run('first') was called from another asyncio task")
    assert "awaited one at a time" in run.error
    assert (first.calls, second.calls) == (0, 0)
    assert run.journal == [] and len(run.history) == 1


async def test_concurrent_steps__gather_in_replay_fails_as_it_does_live(mode: str) -> None:
    # The journal of an earlier version that awaited the two steps one after the other:
    # replayed steps do not wait, so only a rule that ignores timing gives the same verdict.
    first, second = AsyncCounter(1), AsyncCounter(2)

    async def Both(ctx: ObjectContext) -> list[int]:
        return list(await asyncio.gather(ctx.run("first", first), ctx.run("second", second)))

    journal = [{"t": "run", "name": "first", "value": 1}, {"t": "run", "name": "second", "value": 2}]
    run = await run_invocation(handler_of(Both), mode, journal=journal)

    assert run.error.startswith("ConcurrentStepError: ctx.run('first') was called from another asyncio task")
    assert (first.calls, second.calls) == (0, 0)


async def test_concurrent_steps__sends_in_a_gather_fail_and_nothing_is_sent(mode: str) -> None:
    async def Fanout(ctx: ObjectContext) -> None:
        await asyncio.gather(ctx.send("Other", "k1", "H", 1), ctx.send("Other", "k2", "H", 2))

    run = await run_invocation(handler_of(Fanout), mode)

    assert run.error.startswith("ConcurrentStepError: ctx.send Other/H was called from another asyncio task")
    assert run.sent == [] and run.journal == []


async def test_concurrent_steps__caught_error_still_fails_the_invocation(mode: str) -> None:
    async def Sneaky(ctx: ObjectContext) -> str:
        try:
            await asyncio.gather(ctx.run("first", AsyncCounter(1)), ctx.run("second", AsyncCounter(2)))
        except TerminalError:
            return "carried on"
        return "done"

    run = await run_invocation(handler_of(Sneaky), mode)

    assert run.error.startswith("ConcurrentStepError")
    assert isinstance(run.outcome, Failed) and not isinstance(run.outcome, Completed)


async def test_concurrent_steps__plain_coroutines_in_a_gather_and_a_step_under_a_timeout_are_fine(mode: str) -> None:
    step = AsyncCounter(7)

    async def Mixed(ctx: ObjectContext) -> int:
        await asyncio.gather(asyncio.sleep(0), asyncio.sleep(0))  # no step inside: allowed
        async with asyncio.timeout(60):  # same task: allowed
            value: int = await ctx.run("step", step)
        return value

    run = await run_invocation(handler_of(Mixed), mode)

    assert run.result == 7 and step.calls == 1

