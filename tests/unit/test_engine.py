"""Broker-free tests of the invocation state machine (streamapp/runtime/engine.py)."""

from __future__ import annotations

from typing import Any

import pytest

from streamapp.runtime import commands
from streamapp.runtime.commands import invalid
from streamapp.runtime.engine import ApplyError
from tests.unit.engine_fakes import EngineRig


def invoke(inv_id: str, key: str = "k", **extra: Any) -> dict[str, Any]:
    return {"op": "invoke", "id": inv_id, "service": "Svc", "handler": "h", "key": key, "payload": None,
            "not_before": None, "source": None, **extra}


def test_invoke__one_key_runs_in_order_and_other_keys_concurrently() -> None:
    rig = EngineRig()
    p = commands.partition_for("Svc/a", 4)
    epoch = rig.activate(p)
    rig.apply(p, invoke("i1", "a"))
    rig.apply(p, invoke("i2", "a"))
    assert [s[2] for s in rig.actors.started] == ["i1"]
    rig.apply(p, {"op": "complete", "id": "i1", "epoch": epoch, "attempt": 1, "result": 1, "state": {}})
    assert rig.status("i1") == "completed"
    assert [s[2] for s in rig.actors.started] == ["i1", "i2"]


def sleep_entry(wake_at: float, fired: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {"t": "sleep", "name": "sleep", "wake_at": wake_at}
    if fired:
        entry["fired"] = True
    return entry


def running_rig(inv_id: str = "i1") -> tuple[EngineRig, int, str]:
    rig = EngineRig()
    p = commands.partition_for("Svc/k", 4)
    epoch = rig.activate(p)
    rig.apply(p, invoke(inv_id))
    assert rig.actors.running == {inv_id: epoch}
    return rig, p, epoch


def actor_ended(rig: EngineRig, inv_id: str) -> None:
    rig.actors.finished(inv_id)


# -- item 3: reactivation resumes what was under way before what queued behind it ----------------

def test_activation__resumes_the_half_done_invocation_before_a_delayed_one_that_came_due_behind_it() -> None:
    rig = EngineRig()
    p = commands.partition_for("Svc/k", 4)
    epoch = rig.activate(p)
    rig.apply(p, invoke("A", not_before=4e9))  # delayed: arrives first, runs later
    rig.apply(p, invoke("B"))
    assert rig.actors.running == {"B": epoch}
    rig.apply(p, {"op": "entry", "id": "B", "epoch": epoch, "index": 0, "attempt": 1,
                  "entry": {"t": "run", "name": "step", "value": 1}})
    rig.apply(p, {"op": "fire", "id": "A", "epoch": epoch, "at": 4e9})  # A comes due: queues behind B
    assert rig.actors.running == {"B": epoch}
    # Failover: the partition stops here and is activated again under a new epoch.
    rig.engine.stop_partitions({p})
    rig.actors.running.clear()
    rig.activate(p, "e2")
    assert [s[2] for s in rig.actors.started[-1:]] == ["B"]
    assert rig.actors.running == {"B": "e2"}, "the invocation with journal entries must resume first; A waits"


# -- item 4: stale copies of commands are recognised ----------------------------------------------

def test_fire__a_late_copy_does_not_wake_the_next_sleep() -> None:
    rig, p, epoch = running_rig()
    rig.apply(p, {"op": "entry", "id": "i1", "epoch": epoch, "index": 0, "attempt": 1, "entry": sleep_entry(100.0)})
    rig.apply(p, {"op": "suspend", "id": "i1", "epoch": epoch, "attempt": 1, "wake_at": 100.0, "index": 0})
    actor_ended(rig, "i1")
    fire = {"op": "fire", "id": "i1", "epoch": epoch, "at": 100.0}
    rig.apply(p, fire)
    assert rig.status("i1") == "running"
    rig.apply(p, {"op": "entry", "id": "i1", "epoch": epoch, "index": 1, "attempt": 1, "entry": sleep_entry(200.0)})
    rig.apply(p, {"op": "suspend", "id": "i1", "epoch": epoch, "attempt": 1, "wake_at": 200.0, "index": 1})
    actor_ended(rig, "i1")
    rig.apply(p, dict(fire))  # the producer's resend of the first fire lands late
    assert rig.status("i1") == "sleeping"
    assert rig.tables.invocations.get("i1")["wake_at"] == 200.0
    assert "i1" not in rig.actors.running


def test_suspend__a_late_copy_after_the_fire_does_not_park_the_invocation_again() -> None:
    rig, p, epoch = running_rig()
    rig.apply(p, {"op": "entry", "id": "i1", "epoch": epoch, "index": 0, "attempt": 1, "entry": sleep_entry(100.0)})
    suspend = {"op": "suspend", "id": "i1", "epoch": epoch, "attempt": 1, "wake_at": 100.0, "index": 0}
    rig.apply(p, suspend)
    actor_ended(rig, "i1")
    rig.apply(p, {"op": "fire", "id": "i1", "epoch": epoch, "at": 100.0})
    assert rig.actors.running == {"i1": epoch}
    rig.apply(p, dict(suspend))
    assert rig.status("i1") == "running", "the copy must not park the running actor's invocation"
    assert rig.tables.timers.get("i1") is None


def test_retry__a_late_copy_after_the_fire_does_not_park_the_invocation_again() -> None:
    rig, p, epoch = running_rig()
    retry = {"op": "retry", "id": "i1", "epoch": epoch, "attempt": 1, "wake_at": 50.0, "error": "boom"}
    rig.apply(p, retry)
    actor_ended(rig, "i1")
    rig.apply(p, {"op": "fire", "id": "i1", "epoch": epoch, "at": 50.0})
    assert rig.status("i1") == "running"
    rig.apply(p, dict(retry))
    assert rig.status("i1") == "running"
    assert rig.tables.invocations.get("i1")["attempt"] == 1
    assert rig.tables.timers.get("i1") is None


def test_complete__from_an_attempt_that_already_ended_is_ignored() -> None:
    rig, p, epoch = running_rig()
    rig.apply(p, {"op": "retry", "id": "i1", "epoch": epoch, "attempt": 1, "wake_at": 50.0, "error": "boom"})
    actor_ended(rig, "i1")
    rig.apply(p, {"op": "fire", "id": "i1", "epoch": epoch, "at": 50.0})
    rig.apply(p, {"op": "complete", "id": "i1", "epoch": epoch, "attempt": 1, "result": "stale", "state": {}})
    assert rig.status("i1") == "running"
    rig.apply(p, {"op": "complete", "id": "i1", "epoch": epoch, "attempt": 2, "result": "ok", "state": {}})
    assert rig.tables.results.get("i1")["result"] == "ok"


def test_activate__a_second_copy_of_the_live_activation_starts_no_second_actor() -> None:
    rig, p, epoch = running_rig()
    started = len(rig.actors.started)
    rig.apply(p, {"op": "activate", "epoch": epoch, "at": 0.0})
    assert len(rig.actors.started) == started
    assert rig.actors.running == {"i1": epoch}


# -- item 8: a command that fails to apply is applied again, never skipped -------------------------

def test_apply__a_failed_command_is_not_counted_as_applied_and_applies_when_read_again() -> None:
    rig = EngineRig()
    p = commands.partition_for("Svc/k", 4)
    rig.activate(p)
    table = rig.tables.invocations
    original = type(table).__setitem__

    def broken(self: Any, key: str, value: Any) -> None:
        raise OSError("disk full")

    type(table).__setitem__ = broken  # type: ignore[method-assign]
    try:
        with pytest.raises(ApplyError, match="op=invoke"):
            rig.apply(p, invoke("i1"), offset=5)
    finally:
        type(table).__setitem__ = original  # type: ignore[method-assign]
    assert rig.engine.applied[p] < 5
    rig.apply(p, invoke("i1"), offset=5)  # read again after the restart: applied now
    assert rig.status("i1") == "pending"
    assert "i1" in rig.actors.running


@pytest.mark.parametrize(("cmd", "reason"), [
    ({"op": "nope"}, "unknown command"),
    ({"op": "invoke", "id": "x", "service": "S", "handler": "h"}, "lacks key"),
    ({"op": "suspend", "id": "x", "epoch": "e", "wake_at": "soon"}, "non-numeric wake_at"),
    ({"op": "complete", "id": "x", "epoch": "e", "state": [1]}, "not an object"),
    ({"op": "expire", "before": True}, "non-numeric before"),
])
def test_invalid__names_why_a_command_can_never_be_applied(cmd: dict[str, Any], reason: str) -> None:
    assert reason in (invalid(cmd) or "")


def test_invalid__accepts_well_formed_commands() -> None:
    assert invalid(invoke("i1")) is None
    assert invalid({"op": "fire", "id": "i1", "epoch": "e", "at": 1.5}) is None
