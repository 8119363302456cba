"""The partition state machine: ``apply(state, offset, command)`` changes rows and returns actions.

One writer per partition: only the invocations agent applies, inside its
stream iteration, so every row written goes to the partition of the command
being applied and reaches the changelog before Faust commits the command's
offset (at-least-once: Faust flushes the producer, then commits).

Applying starts nothing (no task, timer or future): it returns actions
(``actions.py``) that the partition's leader executes (``engine.py``). It
knows nothing of leadership either; the same commands give the same rows
and the same actions on every worker that applies them.

Besides the rows, the state keeps, in memory, the key-serial actor map: for
each key the invocation in flight (running, sleeping, retrying or paused)
and the queue behind it. It is built from the ``invocations`` table by each
``activate`` command (everything the log holds before that command has been
applied by then, so no journaled step is lost), and kept from there on.

Fencing: actor and scheduler commands carry the epoch (activation token)
they were issued under; a command from another epoch is ignored.

Staleness: any command may arrive twice or late (the producer resends after a
timeout). Each carries what makes a late copy recognisable (``ops.py``), and
applying ignores it then:

    entry     journal ``index`` and ``attempt``: only the next entry of the running attempt
    suspend   ``index`` of the sleep entry: only while that sleep has not fired
    retry     ``attempt``: only the outcome of the running attempt (rec.attempt + 1)
    complete  ``attempt``: likewise
    fail      ``attempt``: likewise
    fire      ``at``: only the timer armed for that wake-up time
    activate  the epoch: a second copy of the running activation changes nothing

A command at a position already applied (read again after a rebalance) is
skipped: the position is the record's offset and the command's place in it
(a record can hold several commands, ``commands.py``). A command that raises
is not counted as applied (``ApplyError``), so it is applied again when read
again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from streamapp.runtime import expiry, keyserial, operate, ops
from streamapp.runtime.actions import (
    Action,
    Activated,
    ArmTimer,
    CancelActor,
    DeadLetter,
    EntryDecided,
    StartActor,
)
from streamapp.runtime.commands import object_key
from streamapp.runtime.finish import finish
from streamapp.runtime.limits import RowTooLargeError
from streamapp.runtime.partition_state import IN_FLIGHT, ApplyError, PartitionState, started, summarize

log = logging.getLogger(__name__)

SEQ_PER_RECORD = 4096  # a record of the internal topic holds at most this many commands (``commands.MAX_BATCH``)


def position(offset: int, index: int) -> int:
    """Where a command stands in its partition's log: its record's offset, then its place in the record.

    Invocations queue by it (``seq``). Rows written by a version that had one
    command per record hold the bare offset, lower than any position of a
    later record: they still queue first.
    """
    return offset * SEQ_PER_RECORD + index


def apply(st: PartitionState, offset: int, cmd: ops.Command, index: int = 0) -> list[Action]:
    """Apply ``cmd``, command ``index`` of the record at ``offset`` of partition ``st.p``; the actions it asks for.

    Raises ``ApplyError`` when applying failed; the command then counts as
    not applied, so it is applied again when read again.
    """
    # Faust drops uncommitted acks on every rebalance, so a partition this
    # worker keeps is consumed again from its last commit. Those commands
    # are already in the tables and in the actor map: skip them.
    if (offset, index) <= (st.applied, st.applied_index):
        return []
    out: list[Action] = []
    st.shared.store.positions.applying[st.p] = offset  # every row this writes says so (runtime/changelog.py)
    pos = position(offset, index)
    try:
        if isinstance(cmd, ops.FENCED) and cmd.epoch != st.current_epoch():
            log.debug("Ignoring stale command op=%s id=%s epoch=%s", cmd.op, cmd.id, cmd.epoch)
            if isinstance(cmd, ops.Entry):
                out.append(EntryDecided(cmd.id, cmd.index, False))
        else:
            APPLY[type(cmd)](st, pos, cmd, out)
    except RowTooLargeError as exc:  # raised before the row was written
        _fail_too_large(st, exc, out)
    except Exception as exc:
        raise ApplyError(f"command op={cmd.op} id={getattr(cmd, 'id', None)} partition={st.p} offset={offset} "
                         f"index={index}: {exc!r}") from exc
    st.applied, st.applied_index = offset, index
    return out


# -- commands ----------------------------------------------------------------
def _activate(st: PartitionState, pos: int, cmd: ops.Activate, out: list[Action]) -> None:
    if st.built == cmd.epoch:
        return  # a second copy of the activation this partition runs under
    store = st.shared.store
    st.epoch = st.built = cmd.epoch
    store.meta[f"p{st.p}"] = {"epoch": cmd.epoch}
    st.inflight.clear()
    st.queues.clear()
    # Per key: what was already under way (in flight, or dispatched and
    # journaled or retried before the last owner stopped) resumes first;
    # the rest queue in arrival order.
    entries = sorted((rec for _, rec in store.partition_items(store.invocations, st.p)),
                     key=lambda rec: (not started(rec), rec["seq"]))
    st.summary = {rec["id"]: summarize(rec) for rec in entries}
    rebuilt: list[Action] = []
    for rec in entries:
        okey = object_key(rec["service"], rec["key"])
        status = rec["status"]
        if status in IN_FLIGHT:
            st.inflight[okey] = rec["id"]
            if status == "running":
                rebuilt.append(StartActor(st.p, st.epoch, rec))
            elif status in ("sleeping", "retrying"):
                rebuilt.append(ArmTimer(st.p, st.epoch, rec["id"], rec["wake_at"]))
        elif status == "scheduled":
            rebuilt.append(ArmTimer(st.p, st.epoch, rec["id"], rec["not_before"]))
        elif okey not in st.inflight and started(rec):  # dispatched and half done when the last owner stopped
            st.inflight[okey] = rec["id"]
            rebuilt.append(StartActor(st.p, st.epoch, rec))
        else:  # pending: queued, or dispatched (nothing journaled) when the last owner stopped
            st.queues.setdefault(okey, deque()).append(rec["id"])
    resumed = sum(1 for a in rebuilt if isinstance(a, StartActor))
    for okey in list(st.queues):
        if okey not in st.inflight:
            keyserial.dispatch_next(st, okey, rebuilt)
    out.append(Activated(st.p, cmd.epoch, len(entries), resumed))
    out.extend(rebuilt)


def _invoke(st: PartitionState, pos: int, cmd: ops.Invoke, out: list[Action]) -> None:
    inv_id = cmd.id
    store = st.shared.store
    if store.invocations.get(inv_id) is not None or store.results.get(inv_id) is not None:
        log.info("Duplicate invocation ignored invocationID=%s", inv_id)
        return
    now = time.time()
    delayed = cmd.not_before is not None and cmd.not_before > now
    rec = {
        "id": inv_id, "service": cmd.service, "handler": cmd.handler, "key": cmd.key,
        "payload": cmd.payload, "status": "scheduled" if delayed else "pending",
        "attempt": 0, "journal": [], "seq": pos, "p": st.p, "created": now,
        "not_before": cmd.not_before, "wake_at": None, "result": None, "error": None,
        "source": cmd.source,
    }
    if cmd.trace:  # only when traced: an untraced row stays as it was
        rec["trace"] = cmd.trace
    st.save(rec)
    if delayed:
        assert cmd.not_before is not None
        store.timers[inv_id] = {"wake_at": cmd.not_before, "p": st.p}
        if st.built is not None:
            out.append(ArmTimer(st.p, st.epoch, inv_id, cmd.not_before))
        return
    keyserial.enqueue(st, object_key(cmd.service, cmd.key), inv_id, out)


def _running(st: PartitionState, inv_id: str, attempt: int | None) -> dict[str, Any] | None:
    """The record an actor command applies to, if its attempt is still current.

    Dispatching does not write the record (it stays "pending" until the
    attempt's outcome); the epoch check already rejects commands of actors
    from an earlier activation.
    """
    rec = st.record(inv_id)
    if rec is None or rec["status"] not in ("pending", "running"):
        return None
    if attempt is not None and attempt != rec["attempt"] + 1:
        return None  # from an attempt that already ended
    return rec


def _entry(st: PartitionState, pos: int, cmd: ops.Entry, out: list[Action]) -> None:
    rec = _running(st, cmd.id, cmd.attempt)
    if rec is not None and operate.stop_if_cancelled(st, rec, out):
        out.append(EntryDecided(cmd.id, cmd.index, False))  # the step after the cancel does not count
        return
    if rec is None or len(rec["journal"]) != cmd.index:
        # A late copy (its waiter was resolved by the first), or the attempt ended.
        out.append(EntryDecided(cmd.id, cmd.index, rec is not None and len(rec["journal"]) > cmd.index))
        return
    rec["journal"] = [*rec["journal"], cmd.entry]
    st.save(rec)
    out.append(EntryDecided(cmd.id, cmd.index, True))


def _park(st: PartitionState, rec: dict[str, Any], status: str, wake_at: float, out: list[Action]) -> None:
    rec["status"] = status
    rec["wake_at"] = wake_at
    st.save(rec)
    st.shared.store.timers[rec["id"]] = {"wake_at": wake_at, "p": st.p}
    if st.built is not None:
        out.append(ArmTimer(st.p, st.epoch, rec["id"], wake_at))


def _suspend(st: PartitionState, pos: int, cmd: ops.Suspend, out: list[Action]) -> None:
    rec = _running(st, cmd.id, cmd.attempt)
    if rec is None or operate.stop_if_cancelled(st, rec, out):
        return
    if cmd.index is not None:
        journal = rec["journal"]
        index = cmd.index
        if len(journal) != index + 1 or journal[index].get("t") != "sleep" or journal[index].get("fired"):
            return  # a copy of a suspension whose sleep already fired
    _park(st, rec, "sleeping", cmd.wake_at, out)


def _retry(st: PartitionState, pos: int, cmd: ops.Retry, out: list[Action]) -> None:
    rec = _running(st, cmd.id, cmd.attempt)
    if rec is not None and not operate.stop_if_cancelled(st, rec, out):
        # Every version sends the attempt; without one, count this as the running attempt's retry.
        rec["attempt"] = cmd.attempt if cmd.attempt is not None else rec["attempt"] + 1
        rec["error"] = cmd.error
        _park(st, rec, "retrying", cmd.wake_at, out)


def _complete(st: PartitionState, pos: int, cmd: ops.Complete, out: list[Action]) -> None:
    rec = _running(st, cmd.id, cmd.attempt)
    if rec is None:
        return
    okey = object_key(rec["service"], rec["key"])
    limits, table = st.shared.limits, st.shared.store.state
    limits.check_row("results", rec["id"], {**rec, "status": "completed", "result": cmd.result}, rec)
    if cmd.state:
        state = dict(table.get(okey) or {})
        for name, value in cmd.state.items():
            if value is None:
                state.pop(name, None)
            else:
                state[name] = value
        raw = limits.check_row("state", okey, state, rec)  # before any write: a refusal leaves state as it was
        if state:
            table.put(okey, state, raw)
        elif table.get(okey) is not None:
            del table[okey]
    rec["status"] = "completed"
    rec["result"] = cmd.result
    if cmd.attempt is not None:
        rec["attempt"] = cmd.attempt
    finish(st, rec, out)


def _fail(st: PartitionState, pos: int, cmd: ops.Fail, out: list[Action]) -> None:
    rec = _running(st, cmd.id, cmd.attempt)
    if rec is None or operate.stop_if_cancelled(st, rec, out):
        return
    rec["error"] = cmd.error
    rec["code"] = cmd.code
    if cmd.attempt is not None:
        rec["attempt"] = cmd.attempt
    if cmd.pause:
        rec["status"] = "paused"
        st.save(rec)
        return
    rec["status"] = "failed"
    finish(st, rec, out)


def _fire(st: PartitionState, pos: int, cmd: ops.Fire, out: list[Action]) -> None:
    rec = st.record(cmd.id)
    if rec is None:
        return
    armed = rec["not_before"] if rec["status"] == "scheduled" else rec["wake_at"]
    if cmd.at is not None and cmd.at != armed:
        return  # a copy of the fire of an earlier timer of this invocation
    if rec["status"] in ("sleeping", "retrying"):
        st.drop_timer(rec["id"])
        journal = rec["journal"]
        if rec["status"] == "sleeping" and journal and journal[-1]["t"] == "sleep":
            rec["journal"] = [*journal[:-1], {**journal[-1], "fired": True}]
        rec["status"] = "running"
        rec["wake_at"] = None
        st.save(rec)
        if st.built is not None:
            out.append(StartActor(st.p, st.epoch, rec))
    elif rec["status"] == "scheduled":
        st.drop_timer(rec["id"])
        rec["status"] = "pending"
        rec["seq"] = pos  # it joins its key's queue now, behind what arrived before
        st.save(rec)
        keyserial.enqueue(st, object_key(rec["service"], rec["key"]), rec["id"], out)


def _expire(st: PartitionState, pos: int, cmd: ops.Expire, out: list[Action]) -> None:
    expiry.expire(st, cmd.before)


APPLY: dict[type, Callable[[PartitionState, int, Any, list[Action]], None]] = {
    ops.Invoke: _invoke, ops.Activate: _activate, ops.Entry: _entry, ops.Suspend: _suspend,
    ops.Retry: _retry, ops.Complete: _complete, ops.Fail: _fail, ops.Fire: _fire,
    ops.Resume: operate.resume, ops.Kill: operate.kill, ops.Cancel: operate.cancel, ops.Purge: operate.purge,
    ops.Expire: _expire,
}


def _fail_too_large(st: PartitionState, exc: RowTooLargeError, out: list[Action]) -> None:
    """A row of this invocation would be refused by its changelog: end it, failed, and move the key on.

    Nothing of the command that raised was written. The invocation keeps
    the last record that fit; its actor (if any) stops.
    """
    inv_id = exc.rec["id"]
    error = f"TooLargeError: {exc}"
    rec = st.record(inv_id)
    if rec is None:  # a new invocation whose record never fit: give _finish one to remove
        rec = {**exc.rec, "payload": None, "journal": []}
        st.shared.store.invocations[inv_id] = rec
    log.error("Invocation failed method=%s/%s invocationID=%s error=%s", rec["service"], rec["handler"],
              inv_id, error)
    out.append(CancelActor(inv_id))
    keyserial.unqueue(st, rec)
    out.append(DeadLetter({**rec, "payload": exc.rec.get("payload")}, error))
    rec.update(status="failed", error=error, code=500, result=None)
    finish(st, rec, out)
