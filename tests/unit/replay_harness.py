"""Broker-free runner for durable handlers: an in-memory journal and a fake clock.

``run_invocation`` drives ``executor.execute`` for one invocation until it
completes, fails or pauses, doing what the runtime does between attempts:

    Parked(wake_at)   advance the clock to wake_at, mark the last sleep entry
                      fired (``{**entry, "fired": True}``), execute again
    Retry(wake_at)    advance the clock to wake_at, execute again with attempt + 1

Two modes (run every handler test in both):

    "straight"        execute again only when the executor asks (park / retry)
    "always_replay"   restate's always-replay mode: after EVERY journal append the
                      attempt is aborted and the handler re-executed from the start
                      with the journal so far, which catches non-determinism

Journal entries go through JSON on their way in and out, as they do through
Kafka, so a handler never sees the objects it journaled.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from streamapp.durable import executor
from streamapp.durable.executor import Completed, Failed, Outcome, Parked, Paused, Retry
from streamapp.durable.service import Handler

MODES = ("straight", "always_replay")
START = 1_700_000_000.0


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = START) -> None:
        self._now = now

    def now(self) -> float:
        return self._now

    def advance_to(self, when: float) -> None:
        self._now = max(self._now, when)

    def advance(self, seconds: float) -> None:
        self._now += seconds


class _Crash(BaseException):
    """Ends an attempt the way a killed worker would: nothing in the handler can catch it."""


class MemorySink:
    """JournalSink that keeps the durable journal and the sent invocations in memory."""

    def __init__(self, journal: list[dict[str, Any]], *, always_replay: bool, crash_after_sends: int = 0) -> None:
        self.journal = journal
        self.sent: list[dict[str, Any]] = []
        self.always_replay = always_replay
        self.crash_after_sends = crash_after_sends
        self.attempt_journal: list[dict[str, Any]] = []  # the list the running attempt was given

    async def append(self, entry: dict[str, Any]) -> None:
        # The runtime numbers entries by the length of the journal it passed to the
        # executor, so that list must grow with every entry made durable.
        assert len(self.attempt_journal) == len(self.journal), "journal index out of step with durable entries"
        self.journal.append(json.loads(json.dumps(entry)))
        if self.always_replay:
            raise _Crash

    async def send(self, target: dict[str, Any]) -> None:
        self.sent.append(json.loads(json.dumps(target)))
        if self.crash_after_sends > 0:
            self.crash_after_sends -= 1
            raise _Crash


@dataclasses.dataclass
class Run:
    """What one invocation did, as the runtime would see it."""

    outcome: Completed | Failed | Paused
    journal: list[dict[str, Any]]
    sent: list[dict[str, Any]]
    history: list[tuple[float, Outcome]]  # (clock at the end of the attempt, outcome), aborted attempts left out
    executions: int  # times the handler was started, aborted ones included
    state: dict[str, Any]  # committed state after the invocation
    clock: FakeClock

    @property
    def result(self) -> Any:
        assert isinstance(self.outcome, Completed), f"invocation did not complete: {self.outcome}"
        return self.outcome.result

    @property
    def error(self) -> str:
        assert isinstance(self.outcome, Failed), f"invocation did not fail: {self.outcome}"
        return self.outcome.error

    def retry_delays(self) -> list[float]:
        return [o.wake_at - now for now, o in self.history if isinstance(o, Retry)]

    def park_times(self) -> list[tuple[float, float]]:
        """(clock when parked, wake_at) for every park."""
        return [(now, o.wake_at) for now, o in self.history if isinstance(o, Parked)]


def apply_changes(state: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Apply ``Completed.state_changes`` as the runtime does (None deletes)."""
    new = dict(state)
    for name, value in changes.items():
        if value is None:
            new.pop(name, None)
        else:
            new[name] = value
    return new


async def run_invocation(
    handler: Handler,
    mode: str,
    *,
    payload: Any = None,
    key: str = "key-1",
    invocation_id: str = "inv_test",
    state: Mapping[str, Any] | None = None,
    journal: list[dict[str, Any]] | None = None,
    clock: FakeClock | None = None,
    crash_after_sends: int = 0,
    max_executions: int = 500,
) -> Run:
    """Run one invocation to Completed, Failed or Paused; see the module docstring."""
    assert mode in MODES, mode
    clock = clock or FakeClock()
    committed = json.loads(json.dumps(dict(state or {})))
    durable: list[dict[str, Any]] = json.loads(json.dumps(journal or []))
    sink = MemorySink(durable, always_replay=mode == "always_replay", crash_after_sends=crash_after_sends)
    history: list[tuple[float, Outcome]] = []
    attempt, executions = 1, 0
    while True:
        executions += 1
        assert executions <= max_executions, f"invocation still running after {max_executions} executions"
        sink.attempt_journal = json.loads(json.dumps(durable))
        try:
            outcome = await executor.execute(
                handler,
                invocation_id=invocation_id,
                key=key,
                payload=json.loads(json.dumps(payload)),
                attempt=attempt,
                journal=sink.attempt_journal,
                state=dict(committed),  # shallow, as the runtime passes it
                sink=sink,
                clock=clock,
            )
        except _Crash:
            continue
        history.append((clock.now(), outcome))
        if isinstance(outcome, Parked):
            assert durable and durable[-1]["t"] == "sleep", f"parked without a sleep entry last: {durable}"
            clock.advance_to(outcome.wake_at)
            durable[-1] = {**durable[-1], "fired": True}
        elif isinstance(outcome, Retry):
            clock.advance_to(outcome.wake_at)
            attempt += 1
        else:
            if isinstance(outcome, Completed):
                committed = apply_changes(committed, outcome.state_changes)
            return Run(outcome, durable, sink.sent, history, executions, committed, clock)
