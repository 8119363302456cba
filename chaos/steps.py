"""Re-executed steps: which the contract allows, which it does not; what the run did to the cluster.

A step (``ctx.run``) may run twice only when its worker stopped (killed,
paused past its session, its partition moved) after the side effect and
before the step's journal entry was durable. Once the entry is durable and
applied, every later execution of the invocation must fast-forward past it.

* journaled re-run (a violation), from the internal topic alone: the journal
  entry of step ``i`` of an invocation was applied under epoch E1 (the last
  ``activate`` of its partition before the entry is E1's), and an execution
  under another epoch E2 whose ``activate`` comes later in the log wrote an
  entry for the same step ``i``: E2 started from tables that held the step,
  and ran it again. (An entry under an epoch already superseded is ignored by
  the engine, so a new owner re-running that step is allowed.)
* re-run (allowed): one idempotency key called successfully again by another
  execution. Bounded by what the run did: a fault or a crash must fall in the
  window from ``RERUN_WINDOW`` + the session timeout before the first call to
  the repeat (a pause takes effect only when the session expires). A repeat
  with nothing there is reported as an unexplained re-run (a violation).
  Repeats within one execution (the worker lost the answer and retried the
  step) are counted, not bounded.
* crash: a worker process that exited without the driver asking it to. Caps
  at zero: every crash fails the run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from chaos.proxy import Call

RERUN_WINDOW = 15.0  # seconds before a step's first call in which a fault can explain its re-run


@dataclass(frozen=True)
class Disturbance:
    """Something the driver did to the cluster (a fault or its undo), or a crash it saw."""

    time: float  # wall clock
    kind: str  # a fault or follow-up kind (chaos.faults), "crash", or a driver action ("settle_resume", ...)
    target: str | None  # worker incarnation or slot; None for the broker
    effective: bool = True  # False: the target was not in a state the action could change
    detail: str = ""


@dataclass(frozen=True)
class Entry:
    """A journal ``entry`` command on the internal topic."""

    partition: int
    offset: int
    inv: str
    index: int
    epoch: str


@dataclass(frozen=True)
class EpochStart:
    """An ``activate`` command on the internal topic."""

    partition: int
    offset: int
    epoch: str


def journaled_reruns(entries: Iterable[Entry], epochs: Iterable[EpochStart]) -> list[tuple[Entry, Entry]]:
    """(applied entry, later entry of the same step under an epoch activated after it)."""
    activations: dict[int, list[EpochStart]] = defaultdict(list)
    for e in sorted(epochs, key=lambda e: e.offset):
        activations[e.partition].append(e)

    def live_at(partition: int, offset: int) -> str | None:
        live = None
        for act in activations.get(partition, []):
            if act.offset > offset:
                break
            live = act.epoch
        return live

    def activated_at(partition: int, epoch: str) -> int | None:
        return next((a.offset for a in activations.get(partition, []) if a.epoch == epoch), None)

    by_step: dict[tuple[str, int], list[Entry]] = defaultdict(list)
    for entry in sorted(entries, key=lambda e: (e.partition, e.offset)):
        by_step[(entry.inv, entry.index)].append(entry)
    found = []
    for step in by_step.values():
        applied = [e for e in step if live_at(e.partition, e.offset) == e.epoch]
        if not applied:
            continue
        first = applied[0]
        for later in step:
            start = activated_at(later.partition, later.epoch)
            if later.epoch != first.epoch and start is not None and start > first.offset:
                found.append((first, later))
                break
    return found


@dataclass(frozen=True)
class Rerun:
    key: str
    first: Call
    again: Call
    explained_by: Disturbance | None  # None: no fault or crash near it (when across executions)
    same_execution: bool


def call_reruns(calls: Iterable[Call], execution_of: Callable[[Call], object], events: list[Disturbance],
                session_timeout: float) -> list[Rerun]:
    """Every successful repeat of an idempotency key, with what explains it."""
    by_key: dict[str, list[Call]] = defaultdict(list)
    for call in calls:
        if call.key and call.status == 200:
            by_key[call.key].append(call)
    times = sorted(events, key=lambda d: d.time)
    found = []
    for key, cs in by_key.items():
        cs.sort(key=lambda c: c.start)
        first = cs[0]
        for again in cs[1:]:
            same = execution_of(again) == execution_of(first)
            lo = first.start - session_timeout - RERUN_WINDOW
            cause = next((d for d in times if d.effective and lo <= d.time <= again.start), None)
            found.append(Rerun(key, first, again, cause, same))
    return found
