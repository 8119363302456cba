"""Run one attempt of an invocation and decide what happens next.

The executor knows nothing of Kafka: it takes the invocation's journal and
the key's committed state, runs the handler (fast-forwarding through
journaled steps), and returns an outcome for the runtime to make durable:

    Completed(result, state_changes)   apply state, record result, next in inbox
    Suspended(wake_at)                 park until the durable timer fires
    Retry(error, wake_at)              back off durably, run again from the journal
    Failed(error)                      terminal: dead-letter (or pause, by policy)
    Paused(error)                      the handler no longer matches the journal
                                       (a code change): keep everything, wait for
                                       an operator to resume once the code is fixed

A non-determinism found during the attempt pauses it even when the handler
catches the error, and a step called from another task fails it even when
caught: what the handler did after either is not what its journal says.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from streamapp.durable import codec, mute
from streamapp.durable.context import Clock, JournalSink, ObjectContext
from streamapp.durable.errors import (
    ConcurrentStepError,
    NonDeterminismError,
    RetryableError,
    Suspended,
    TerminalError,
)
from streamapp.durable.service import Handler

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Completed:
    result: Any
    state_changes: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Parked:
    wake_at: float


@dataclasses.dataclass(frozen=True)
class Retry:
    error: str
    wake_at: float
    exc: BaseException | None = dataclasses.field(default=None, compare=False, repr=False)  # for tracing


@dataclasses.dataclass(frozen=True)
class Failed:
    error: str
    exhausted: bool = False  # True when retries ran out (policy may pause instead)
    status_code: int = 500   # for an HTTP caller waiting on the result
    exc: BaseException | None = dataclasses.field(default=None, compare=False, repr=False)  # for tracing


@dataclasses.dataclass(frozen=True)
class Paused:
    error: str


Outcome = Completed | Parked | Retry | Failed | Paused


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def execute(
    handler: Handler,
    *,
    invocation_id: str,
    key: str,
    payload: Any,
    attempt: int,
    journal: list[dict[str, Any]],
    state: Mapping[str, Any],
    sink: JournalSink,
    clock: Clock,
    context: type[ObjectContext] = ObjectContext,
) -> Outcome:
    """Run attempt number ``attempt`` (1-based) of one invocation (``context``: a subclass observes steps)."""
    ctx = context(
        service=handler.service,
        key=key,
        invocation_id=invocation_id,
        state=state,
        journal=journal,
        sink=sink,
        clock=clock,
    )
    try:
        outcome = await _attempt(handler, ctx, payload, attempt, journal, clock)
    finally:
        mute.replaying.set(False)
    return _fault_outcome(ctx.fault) if ctx.fault is not None else outcome


async def _attempt(
    handler: Handler, ctx: ObjectContext, payload: Any, attempt: int, journal: list[dict[str, Any]], clock: Clock
) -> Outcome:
    try:
        arg = handler.decode_input(payload)
        if handler.input_type is None:
            result = await handler.fn(ctx)
        else:
            result = await handler.fn(ctx, arg)
        if ctx.step_index < len(journal):
            entry = journal[ctx.step_index]
            error = NonDeterminismError(ctx.step_index, f"{entry['t']} '{entry['name']}'", "completion")
            ctx.record_fault(error)
            return _fault_outcome(error)
        try:
            value = codec.storable(codec.to_json(result))
        except (TypeError, ValueError) as exc:
            raise TerminalError(f"handler result is not JSON: {exc}") from exc
        return Completed(value, ctx.state_changes())
    except Suspended as suspended:
        return Parked(suspended.wake_at)
    except TerminalError as exc:
        return Failed(describe(exc), status_code=exc.status_code, exc=exc)
    except Exception as exc:  # the one place a handler failure becomes a retry
        policy = handler.retry
        if attempt >= policy.max_attempts:
            return Failed(f"{describe(exc)} (after {attempt} attempts)", exhausted=True, exc=exc)
        delay = policy.backoff(attempt)
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            delay = exc.retry_after
        return Retry(describe(exc), clock.now() + delay, exc)


def _fault_outcome(fault: NonDeterminismError | ConcurrentStepError) -> Outcome:
    if isinstance(fault, NonDeterminismError):
        return Paused(describe(fault))
    return Failed(describe(fault), status_code=fault.status_code)
