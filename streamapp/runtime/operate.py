"""Operator commands, as the partition state machine applies them (``partition.APPLY``).

    resume   a paused invocation runs again (a fresh attempt from its journal)
    kill     now: its actor is stopped mid-step, it ends failed (KilledError)
    cancel   gracefully: a step under way finishes and is journaled, nothing
             after it runs; it ends failed with InvocationCancelledError, code 409
             (Restate's cancellation). An invocation with no step under way
             (queued, scheduled, sleeping, retrying, paused) ends at once.
    purge    a finished invocation's outcome is forgotten before its
             retention ends: its ``results`` row becomes a marker (no result,
             no journal) that still deduplicates its id until the retention
             drops it; lookups answer 404, a call repeating its idempotency
             key 410

A cancel of a running attempt is kept in its row (``cancel``: the command's
position) and its actor is told (``StopAfterStep``; an actor started later
for the row, after a restart, reads it from the row): it starts no step
after that, and sends a ``fail``, which ends the invocation cancelled. The
attempt's next command ends it in any case: a journal entry that raced the
cancel is refused (the actor stops), a suspension, a retry or a failure ends
it cancelled. A ``complete`` is applied as usual: the handler had no step left.
"""

from __future__ import annotations

from typing import Any

from streamapp.runtime import keyserial, ops
from streamapp.runtime.actions import Action, CancelActor, StartActor, StopAfterStep
from streamapp.runtime.commands import object_key
from streamapp.runtime.finish import finish
from streamapp.runtime.partition_state import PartitionState

KILLED = "KilledError: killed by an operator"
CANCELLED = "InvocationCancelledError: cancelled by an operator"
CANCELLED_CODE = 409
PURGED = "InvocationPurgedError: its outcome was purged by an operator"
PURGED_CODE = 410  # a call repeating the purged invocation's idempotency key


def resume(st: PartitionState, pos: int, cmd: ops.Resume, out: list[Action]) -> None:
    rec = st.record(cmd.id)
    if rec is None or rec["status"] != "paused" or pos <= rec.get("resumed_at", -1):
        return  # not paused, or this very resume read again (after a restart) once it paused anew
    rec["status"] = "running"
    rec["resumed_at"] = pos
    rec["attempt"] = 0
    rec["error"] = None
    st.save(rec)
    if st.built is not None:
        out.append(StartActor(st.p, st.epoch, rec))


def kill(st: PartitionState, pos: int, cmd: ops.Kill, out: list[Action]) -> None:
    rec = st.record(cmd.id)
    if rec is not None:
        _end(st, rec, KILLED, None, out)


def cancel(st: PartitionState, pos: int, cmd: ops.Cancel, out: list[Action]) -> None:
    rec = st.record(cmd.id)
    if rec is None or rec.get("cancel") is not None:
        return  # finished already, or this cancel (or an earlier one) is pending
    dispatched = st.inflight.get(object_key(rec["service"], rec["key"])) == rec["id"]
    if dispatched and rec["status"] in ("pending", "running"):  # an attempt may be in a step now
        rec["cancel"] = pos
        st.save(rec)
        out.append(StopAfterStep(rec["id"]))  # its actor starts no step from now on, and says so (``fail``)
        return
    _end(st, rec, CANCELLED, CANCELLED_CODE, out)


def stop_if_cancelled(st: PartitionState, rec: dict[str, Any], out: list[Action]) -> bool:
    """Called with the record an actor's next command applies to: end it if a cancel is pending."""
    if rec.get("cancel") is None:
        return False
    _end(st, rec, CANCELLED, CANCELLED_CODE, out)
    return True


def purge(st: PartitionState, pos: int, cmd: ops.Purge, out: list[Action]) -> None:
    store = st.shared.store
    row = store.results.get(cmd.id)
    if row is None or row.get("purged"):
        return  # unfinished (purge refuses those), expired, or purged already
    if row.get("at") is not None and row["at"] >= store.positions.applying[st.p]:
        return  # finished after this purge in the log: the purge, read again after a restart, found it unfinished
    # The outcome goes; a marker stays until the retention drops it (its expiry entry is kept). Without
    # it an ``invoke`` of this id read again after a restart, from before the purge, would run again.
    store.results[cmd.id] = {
        "id": cmd.id, "service": row["service"], "handler": row["handler"], "key": row["key"],
        "status": "failed", "error": PURGED, "code": PURGED_CODE, "result": None, "purged": True,
        "attempt": row.get("attempt", 0), "created": row.get("created"), "finished": row["finished"],
        "journal": [], "wake_at": None,
    }


def _end(st: PartitionState, rec: dict[str, Any], error: str, code: int | None, out: list[Action]) -> None:
    out.append(CancelActor(rec["id"]))
    st.drop_timer(rec["id"])
    keyserial.unqueue(st, rec)
    rec.update(status="failed", error=error)
    if code is not None:
        rec["code"] = code
    finish(st, rec, out)
