"""The executor and ObjectContext: steps, timers, retries, sends, state.

Every test runs straight through and in always-replay mode (see replay_harness).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from replay_harness import MODES, START, FakeClock, run_invocation

from streamapp.durable import ObjectContext, RetryableError, RetryPolicy, Service, TerminalError
from streamapp.durable.executor import Completed, Failed, Retry
from streamapp.durable.service import Handler

pytestmark = pytest.mark.parametrize("mode", MODES)

FAST = RetryPolicy(initial_interval=1.0, factor=2.0, max_interval=60.0, max_attempts=10)


def handler_of(fn: Callable[..., Awaitable[Any]], *, retry: RetryPolicy | None = None) -> Handler:
    svc = Service("Test", retry=retry or FAST)
    svc.handler()(fn)
    return svc.handlers[fn.__name__]


class Counter:
    """A step function that counts its calls."""

    def __init__(self, result: Any = None) -> None:
        self.calls = 0
        self.result = result

    def __call__(self) -> Any:
        self.calls += 1
        return self.result


@dataclasses.dataclass
class Order:
    item: str
    quantity: int


# -- ctx.run ----------------------------------------------------------------


async def test_run__each_step_function_is_called_once_and_results_flow_on(mode: str) -> None:
    first, second = Counter(20), Counter(22)

    async def Add(ctx: ObjectContext) -> int:
        a = await ctx.run("first", first)
        b = await ctx.run("second", second)
        return a + b

    run = await run_invocation(handler_of(Add), mode)

    assert run.result == 42
    assert (first.calls, second.calls) == (1, 1)
    assert run.journal == [
        {"t": "run", "name": "first", "value": 20},
        {"t": "run", "name": "second", "value": 22},
    ]


async def test_run__replay_returns_journaled_result_without_calling_fn(mode: str) -> None:
    step = Counter("live")

    async def Read(ctx: ObjectContext) -> str:
        return await ctx.run("read", step)

    journal = [{"t": "run", "name": "read", "value": "journaled"}]
    run = await run_invocation(handler_of(Read), mode, journal=journal)

    assert run.result == "journaled"
    assert step.calls == 0


async def test_run__accepts_sync_and_async_functions_with_arguments(mode: str) -> None:
    async def double_later(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    def add(x: int, y: int) -> int:
        return x + y

    async def Compute(ctx: ObjectContext) -> list[int]:
        doubled = await ctx.run("double", double_later, 5)
        total = await ctx.run("add", add, doubled, 3)
        return [doubled, total]

    run = await run_invocation(handler_of(Compute), mode)

    assert run.result == [10, 13]


async def test_run__result_is_what_replay_would_return_not_the_live_object(mode: str) -> None:
    async def Shape(ctx: ObjectContext) -> Any:
        return await ctx.run("shape", lambda: {"pair": (1, 2), 3: "three"})

    run = await run_invocation(handler_of(Shape), mode)

    assert run.result == {"pair": [1, 2], "3": "three"}


async def test_run__terminal_error_in_step_is_journaled_and_reraised_on_replay(mode: str) -> None:
    charge, refund = Counter(), Counter("refunded")
    seen: list[str] = []

    def decline() -> None:
        charge()
        raise TerminalError("card declined")

    async def Checkout(ctx: ObjectContext) -> str:
        try:
            await ctx.run("charge", decline)
        except TerminalError as exc:
            seen.append(str(exc))
            return await ctx.run("refund", refund)
        return "charged"

    run = await run_invocation(handler_of(Checkout), mode)

    assert run.result == "refunded"
    assert charge.calls == 1 and refund.calls == 1
    assert run.journal[0] == {"t": "run", "name": "charge", "failure": "card declined"}
    assert seen and set(seen) == {"card declined"}  # the replayed failure reads like the live one


async def test_run__uncaught_terminal_error_fails_the_invocation_without_retry(mode: str) -> None:
    charge = Counter()

    def decline() -> None:
        charge()
        raise TerminalError("card declined")

    async def Checkout(ctx: ObjectContext) -> None:
        await ctx.run("charge", decline)

    run = await run_invocation(handler_of(Checkout), mode)

    assert run.outcome == Failed("TerminalError: card declined")
    assert charge.calls == 1
    assert not any(isinstance(o, Retry) for _, o in run.history)


@pytest.mark.parametrize("bad", [{1, 2}, object(), math.nan, math.inf], ids=["set", "object", "nan", "inf"])
async def test_run__non_json_result_fails_terminally_naming_the_step(mode: str, bad: Any) -> None:
    step = Counter(bad)

    async def Weird(ctx: ObjectContext) -> None:
        await ctx.run("make-weird", step)

    run = await run_invocation(handler_of(Weird), mode)

    assert isinstance(run.outcome, Failed) and not run.outcome.exhausted
    assert run.error.startswith("TerminalError: step 'make-weird' returned a result that is not JSON")
    assert step.calls == 1  # not retried: retrying would repeat the side effect
    assert run.journal == []


async def test_handler_result__non_json_fails_terminally_without_retry(mode: str) -> None:
    async def Weird(ctx: ObjectContext) -> Any:
        return {1, 2}

    run = await run_invocation(handler_of(Weird), mode)

    assert run.error.startswith("TerminalError: handler result is not JSON")
    assert len(run.history) == 1


async def test_handler_result__dataclass_becomes_json_object(mode: str) -> None:
    async def Make(ctx: ObjectContext) -> Order:
        quantity = await ctx.run("count", lambda: 3)
        return Order("apple", quantity)

    run = await run_invocation(handler_of(Make), mode)

    assert run.result == {"item": "apple", "quantity": 3}


async def test_input__payload_is_decoded_into_the_declared_dataclass(mode: str) -> None:
    async def Place(ctx: ObjectContext, order: Order) -> str:
        assert isinstance(order, Order)
        return await ctx.run("place", lambda: f"{order.quantity}x{order.item}")

    run = await run_invocation(handler_of(Place), mode, payload={"item": "pear", "quantity": 2})

    assert run.result == "2xpear"


async def test_input__invalid_payload_fails_terminally_naming_the_field(mode: str) -> None:
    async def Place(ctx: ObjectContext, order: Order) -> None:
        raise AssertionError("handler must not run on invalid input")

    run = await run_invocation(handler_of(Place), mode, payload={"item": "pear", "quantity": "two"})

    assert run.outcome == Failed("InvalidInputError: input.quantity: expected an integer, got a string")
    assert len(run.history) == 1


# -- ctx.sleep ----------------------------------------------------------------


async def test_sleep__parks_until_now_plus_seconds_and_resumes_only_after(mode: str) -> None:
    clock = FakeClock()
    seen: list[float] = []

    def look_at_clock() -> float:
        seen.append(clock.now())
        return clock.now()

    async def Wait(ctx: ObjectContext) -> float:
        await ctx.run("before", lambda: None)
        await ctx.sleep(30)
        return await ctx.run("after", look_at_clock)

    run = await run_invocation(handler_of(Wait), mode, clock=clock)

    assert run.park_times() and {wake for _, wake in run.park_times()} == {START + 30}
    assert seen == [START + 30]  # the step after the sleep ran once, and not before wake_at
    assert run.result == START + 30
    assert run.journal[1] == {"t": "sleep", "name": "sleep", "wake_at": START + 30, "fired": True}


async def test_sleep__early_reexecution_parks_again_at_the_same_wake_at(mode: str) -> None:
    # A worker restarted before the timer fired re-executes from the journal.
    after = Counter()

    async def Wait(ctx: ObjectContext) -> None:
        await ctx.sleep(30)
        await ctx.run("after", after)

    clock = FakeClock(START + 10)
    journal = [{"t": "sleep", "name": "sleep", "wake_at": START + 30}]
    run = await run_invocation(handler_of(Wait), mode, journal=journal, clock=clock)

    assert run.park_times()[0] == (START + 10, START + 30)
    assert after.calls == 1
    assert isinstance(run.outcome, Completed)


async def test_sleep__zero_or_negative_does_not_park(mode: str) -> None:
    async def Wait(ctx: ObjectContext) -> str:
        await ctx.sleep(0)
        await ctx.sleep(-5)
        return "done"

    run = await run_invocation(handler_of(Wait), mode)

    assert run.result == "done"
    assert run.park_times() == []
    assert [e["wake_at"] for e in run.journal] == [START, START]


async def test_sleep__cannot_be_swallowed_by_except_exception(mode: str) -> None:
    async def Stubborn(ctx: ObjectContext) -> str:
        try:
            await ctx.sleep(5)
        except Exception:  # a user's catch-all must not eat the suspension
            return "swallowed"
        return "slept"

    run = await run_invocation(handler_of(Stubborn), mode)

    assert run.result == "slept"
    assert run.clock.now() == START + 5


# -- retries ------------------------------------------------------------------


async def test_retry__backoff_follows_policy_then_exhausts(mode: str) -> None:
    policy = RetryPolicy(initial_interval=1.0, factor=3.0, max_interval=20.0, max_attempts=5)
    prepare, call = Counter(), Counter()

    def down() -> None:
        call()
        raise ConnectionError("backend down")

    async def Fetch(ctx: ObjectContext) -> None:
        await ctx.run("prepare", prepare)
        await ctx.run("fetch", down)

    run = await run_invocation(handler_of(Fetch, retry=policy), mode)

    assert run.retry_delays() == [1.0, 3.0, 9.0, 20.0]
    assert run.outcome == Failed("ConnectionError: backend down (after 5 attempts)", exhausted=True)
    assert call.calls == 5
    assert prepare.calls == 1  # the journaled step before the failing one is not repeated


async def test_retry__single_attempt_policy_exhausts_on_first_failure(mode: str) -> None:
    async def Boom(ctx: ObjectContext) -> None:
        raise ValueError("boom")

    run = await run_invocation(handler_of(Boom, retry=RetryPolicy(max_attempts=1)), mode)

    assert run.outcome == Failed("ValueError: boom (after 1 attempts)", exhausted=True)


async def test_retry__succeeds_once_the_step_stops_failing(mode: str) -> None:
    failures = iter([OSError("timeout"), OSError("timeout")])

    def flaky() -> str:
        exc = next(failures, None)
        if exc is not None:
            raise exc
        return "ok"

    async def Fetch(ctx: ObjectContext) -> str:
        return await ctx.run("fetch", flaky)

    run = await run_invocation(handler_of(Fetch), mode)

    assert run.result == "ok"
    assert run.retry_delays() == [1.0, 2.0]
    assert [o.error for _, o in run.history if isinstance(o, Retry)] == ["OSError: timeout"] * 2


async def test_retry__retryable_error_retry_after_overrides_backoff(mode: str) -> None:
    errors = iter([RetryableError("rate limited", retry_after=7.5), RetryableError("busy")])

    def limited() -> str:
        exc = next(errors, None)
        if exc is not None:
            raise exc
        return "ok"

    async def Fetch(ctx: ObjectContext) -> str:
        return await ctx.run("fetch", limited)

    run = await run_invocation(handler_of(Fetch), mode)

    assert run.result == "ok"
    assert run.retry_delays() == [7.5, 2.0]  # then policy backoff for attempt 2
    assert [o.error for _, o in run.history if isinstance(o, Retry)] == [
        "RetryableError: rate limited",
        "RetryableError: busy",
    ]


async def test_retry__terminal_error_raised_by_handler_is_not_retried(mode: str) -> None:
    async def Reject(ctx: ObjectContext) -> None:
        await ctx.run("check", lambda: None)
        raise TerminalError("not allowed")

    run = await run_invocation(handler_of(Reject), mode)

    assert run.outcome == Failed("TerminalError: not allowed", exhausted=False)
    assert [type(o) for _, o in run.history] == [Failed]


# -- state --------------------------------------------------------------------


async def test_state__changes_overlay_committed_state_and_are_returned_on_completion(mode: str) -> None:
    views: list[Any] = []

    async def Edit(ctx: ObjectContext) -> None:
        ctx.set("c", {"n": 3})
        ctx.clear("a")
        await ctx.run("step", lambda: None)  # state built before a step must survive replay
        views.append((ctx.get("a", "gone"), ctx.get("b"), ctx.get("c"), ctx.state_keys()))
        ctx.clear_all()
        views.append(ctx.state_keys())
        ctx.set("d", [4])
        views.append((ctx.get("b", "gone"), ctx.get("d"), ctx.state_keys()))

    run = await run_invocation(handler_of(Edit), mode, state={"a": 1, "b": 2})

    assert views == [("gone", 2, {"n": 3}, ["b", "c"]), [], ("gone", [4], ["d"])]
    assert isinstance(run.outcome, Completed)
    assert run.outcome.state_changes == {"a": None, "b": None, "c": None, "d": [4]}
    assert run.state == {"d": [4]}


async def test_state__set_stores_a_snapshot_of_the_value(mode: str) -> None:
    async def Edit(ctx: ObjectContext) -> Any:
        items = ["x"]
        ctx.set("items", items)
        items.append("leaked")
        read = ctx.get("items")
        read.append("leaked too")
        return ctx.get("items")

    run = await run_invocation(handler_of(Edit), mode)

    assert run.result == ["x"]
    assert run.state == {"items": ["x"]}


async def test_state__mutating_a_read_value_does_not_change_committed_state(mode: str) -> None:
    # Like PackageTracker/UpdateLocation: read, mutate, set -- then a later step fails once.
    failures = iter([ConnectionError("flaky")])

    def notify() -> None:
        exc = next(failures, None)
        if exc is not None:
            raise exc

    async def Append(ctx: ObjectContext) -> None:
        info = ctx.get("info")
        info["locations"].append("Berlin")
        ctx.set("info", info)
        await ctx.run("notify", notify)

    run = await run_invocation(handler_of(Append), mode, state={"info": {"locations": []}})

    assert run.state == {"info": {"locations": ["Berlin"]}}


async def test_state__failed_invocation_commits_no_changes(mode: str) -> None:
    async def Edit(ctx: ObjectContext) -> None:
        ctx.set("a", 99)
        raise TerminalError("nope")

    run = await run_invocation(handler_of(Edit), mode, state={"a": 1})

    assert isinstance(run.outcome, Failed)
    assert run.state == {"a": 1}


# -- ctx.send -----------------------------------------------------------------


async def test_send__enqueues_once_with_deterministic_id_and_is_not_resent_on_replay(mode: str) -> None:
    async def Notify(ctx: ObjectContext) -> list[str]:
        await ctx.run("before", lambda: None)
        first = await ctx.send("Mailer", "alice", "Send", {"text": "hi"}, delay=10)
        second = await ctx.send("Mailer", "bob", "Send")
        await ctx.sleep(1)  # replays the sends after a park too
        return [first, second]

    run = await run_invocation(handler_of(Notify), mode, invocation_id="inv_parent")
    again = await run_invocation(handler_of(Notify), mode, invocation_id="inv_parent")
    other = await run_invocation(handler_of(Notify), mode, invocation_id="inv_other")

    assert run.sent == [
        {
            "id": run.result[0],
            "service": "Mailer",
            "key": "alice",
            "handler": "Send",
            "payload": {"text": "hi"},
            "not_before": START + 10,
        },
        {
            "id": run.result[1],
            "service": "Mailer",
            "key": "bob",
            "handler": "Send",
            "payload": None,
            "not_before": None,
        },
    ]
    assert run.result[0] != run.result[1]
    assert again.result == run.result
    assert set(other.result).isdisjoint(run.result)
    assert [e["t"] for e in run.journal] == ["run", "send", "send", "sleep"]


async def test_send__crash_before_journaling_resends_with_the_same_id(mode: str) -> None:
    async def Notify(ctx: ObjectContext) -> str:
        return await ctx.send("Mailer", "alice", "Send", {"text": "hi"})

    run = await run_invocation(handler_of(Notify), mode, crash_after_sends=1)

    assert len(run.sent) == 2  # sent, crashed before the journal entry, sent again
    assert run.sent[0] == run.sent[1]
    assert run.result == run.sent[0]["id"]


# -- idempotency keys ---------------------------------------------------------


async def test_idempotency_key__stable_across_replays_and_retries_of_a_step(mode: str) -> None:
    keys: dict[str, list[str]] = {"create": [], "update": [], "before-update": []}
    failures = iter([OSError("timeout")])

    async def Post(ctx: ObjectContext) -> None:
        def create() -> str:
            keys["create"].append(ctx.idempotency_key)
            exc = next(failures, None)
            if exc is not None:
                raise exc
            return "post-1"

        await ctx.run("create", create)
        keys["before-update"].append(ctx.idempotency_key)
        await ctx.run("update", lambda: keys["update"].append(ctx.idempotency_key))

    await run_invocation(handler_of(Post), mode, invocation_id="inv_abc")

    assert keys["create"] == ["inv_abc:0", "inv_abc:0"]  # the failed call and its retry share a key
    assert keys["update"] == ["inv_abc:1"]
    assert set(keys["before-update"]) == {"inv_abc:1"}


async def test_idempotency_key__differs_between_invocations(mode: str) -> None:
    async def Key(ctx: ObjectContext) -> str:
        return await ctx.run("create", lambda: ctx.idempotency_key)

    one = await run_invocation(handler_of(Key), mode, invocation_id="inv_one")
    two = await run_invocation(handler_of(Key), mode, invocation_id="inv_two")

    assert one.result != two.result
