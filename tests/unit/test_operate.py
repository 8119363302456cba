"""Operator commands on the partition state machine: cancel (graceful) and purge (``runtime/operate.py``)."""

from __future__ import annotations

import pytest

from streamapp.runtime.actions import CancelActor, EntryDecided, Finished, StartActor, StopAfterStep
from streamapp.runtime.operate import CANCELLED, CANCELLED_CODE, PURGED, PURGED_CODE
from tests.unit.partition_sim import Machine, fixed_clock, invoke, sleep_entry


@pytest.fixture(autouse=True)
def _clock(monkeypatch: pytest.MonkeyPatch) -> None:
    fixed_clock(monkeypatch)


def started(actions: list) -> list[str]:
    return [a.rec["id"] for a in actions if isinstance(a, StartActor)]


def running_machine() -> Machine:
    """i1 runs (dispatched, one step journaled), i2 queues behind it on the same key."""
    m = Machine()
    m.apply({"op": "activate", "epoch": "e1"})
    m.apply(invoke("i1"))
    m.apply(invoke("i2"))
    m.apply({"op": "entry", "id": "i1", "epoch": "e1", "index": 0, "attempt": 1, "entry": {"t": "run", "v": 1}})
    return m


def test_cancel__of_a_running_attempt_lets_the_step_under_way_finish_and_refuses_the_next() -> None:
    m = running_machine()
    # Nothing stops mid-step: the actor is told to start no step after this one.
    assert m.apply({"op": "cancel", "id": "i1"}) == [StopAfterStep("i1")]
    assert m.rows()["invocations"]["i1"]["status"] in ("pending", "running")
    # The actor's next journal entry: refused (the actor stops), the invocation ends, its key moves on.
    out = m.apply({"op": "entry", "id": "i1", "epoch": "e1", "index": 1, "attempt": 1, "entry": {"t": "run", "v": 2}})
    assert [type(a) for a in out] == [CancelActor, Finished, StartActor, EntryDecided]
    assert out[-1] == EntryDecided("i1", 1, False) and started(out) == ["i2"]
    result = m.rows()["results"]["i1"]
    assert (result["status"], result["error"], result["code"]) == ("failed", CANCELLED, CANCELLED_CODE)
    assert [e["v"] for e in result["journal"]] == [1], "the step after the cancel is not journaled"


def test_cancel__the_actors_fail_a_suspension_or_a_retry_after_it_ends_the_invocation_cancelled() -> None:
    for outcome in ({"op": "suspend", "wake_at": 50.0, "index": 1},
                    {"op": "retry", "wake_at": 50.0, "error": "boom"},
                    {"op": "fail", "error": CANCELLED, "code": CANCELLED_CODE},  # what the told actor sends
                    {"op": "fail", "error": "TerminalError: its own"}):
        m = running_machine()
        if outcome["op"] == "suspend":
            m.apply({"op": "entry", "id": "i1", "epoch": "e1", "index": 1, "attempt": 1, "entry": sleep_entry(50.0)})
        m.apply({"op": "cancel", "id": "i1"})
        out = m.apply({"id": "i1", "epoch": "e1", "attempt": 1, **outcome})
        assert started(out) == ["i2"], outcome
        result = m.rows()["results"]["i1"]
        assert (result["error"], result["code"]) == (CANCELLED, CANCELLED_CODE) and m.rows()["timers"] == {}


def test_cancel__a_completion_after_it_stands_the_handler_had_no_step_left() -> None:
    m = running_machine()
    m.apply({"op": "cancel", "id": "i1"})
    m.apply({"op": "complete", "id": "i1", "epoch": "e1", "attempt": 1, "result": 7})
    assert m.rows()["results"]["i1"]["status"] == "completed"


def test_cancel__of_a_queued_or_sleeping_invocation_ends_it_at_once() -> None:
    m = running_machine()
    out = m.apply({"op": "cancel", "id": "i2"})  # queued behind i1: no step under way
    assert [type(a) for a in out] == [CancelActor, Finished] and m.rows()["results"]["i2"]["error"] == CANCELLED
    m.apply({"op": "entry", "id": "i1", "epoch": "e1", "index": 1, "attempt": 1, "entry": sleep_entry(50.0)})
    m.apply({"op": "suspend", "id": "i1", "epoch": "e1", "attempt": 1, "wake_at": 50.0, "index": 1})
    out = m.apply({"op": "cancel", "id": "i1"})  # sleeping
    assert Finished in map(type, out) and m.rows()["timers"] == {} and m.rows()["invocations"] == {}
    assert m.apply({"op": "cancel", "id": "i1"}) == [], "finished already"


def test_purge__forgets_a_finished_outcome_keeps_a_marker_that_deduplicates_and_refuses_unfinished_ones() -> None:
    m = running_machine()
    assert m.apply({"op": "purge", "id": "i1"}) == [] and "i1" in m.rows()["invocations"], "unfinished: kept"
    m.apply({"op": "complete", "id": "i1", "epoch": "e1", "attempt": 1, "result": 7})
    assert m.rows()["results"]["i1"]["result"] == 7 and list(m.rows()["expiry"].values()) == ["i1"]
    m.apply({"op": "purge", "id": "i1"})
    marker = m.rows()["results"]["i1"]
    assert marker["purged"] and marker["result"] is None and marker["journal"] == []
    assert (marker["error"], marker["code"]) == (PURGED, PURGED_CODE)
    assert list(m.rows()["expiry"].values()) == ["i1"], "the retention drops the marker"
    # An invoke of the id read again (a restart replaying the log from before the purge) is still a duplicate.
    assert m.apply(invoke("i1")) == [] and "i1" not in m.rows()["invocations"]
    rows = m.rows()
    assert m.apply({"op": "purge", "id": "i1"}) == [] and m.rows() == rows


def test_purge__read_again_after_a_restart_does_not_purge_an_outcome_that_came_after_it() -> None:
    # Found by the prefix property: a purge of an unfinished invocation changes nothing; replayed after a
    # restart over tables where the invocation has finished since, it must still change nothing.
    log = [{"op": "activate", "epoch": "e1"}, invoke("i0"), {"op": "purge", "id": "i0"},
           {"op": "complete", "id": "i0", "epoch": "e1", "attempt": 1, "result": 0}]
    m = Machine()
    for offset, cmd in enumerate(log):
        m.apply(cmd, offset)
    m.restart()
    for offset, cmd in enumerate(log):
        m.apply(cmd, offset)
    assert m.rows()["results"]["i0"]["status"] == "completed" and "purged" not in m.rows()["results"]["i0"]
