"""The partition state machine on its own: command sequences in, rows and actions out (no engine, no broker)."""

from __future__ import annotations

import pytest

from streamapp.runtime.actions import Activated, ArmTimer, CancelActor, EntryDecided, Finished, StartActor
from tests.unit.partition_sim import NOW, Machine, P, fixed_clock, invoke, sleep_entry


@pytest.fixture(autouse=True)
def _clock(monkeypatch: pytest.MonkeyPatch) -> None:
    fixed_clock(monkeypatch)


def started(actions: list) -> list[str]:
    return [a.rec["id"] for a in actions if isinstance(a, StartActor)]


def test_invoke__before_any_activation_writes_the_row_and_asks_for_nothing() -> None:
    m = Machine()
    assert m.apply(invoke("i1")) == []
    assert m.rows()["invocations"]["i1"]["status"] == "pending"
    out = m.apply({"op": "activate", "epoch": "e1"})
    assert out == [Activated(P, "e1", 1, 0), StartActor(P, "e1", m.tables.invocations.get("i1"))]
    assert m.rows()["meta"] == {f"p{P}": {"epoch": "e1"}}


def test_invoke__one_key_starts_in_arrival_order_other_keys_at_once() -> None:
    m = Machine()
    m.apply({"op": "activate", "epoch": "e1"})
    assert started(m.apply(invoke("a1", "a"))) == ["a1"]
    assert m.apply(invoke("a2", "a")) == []
    assert started(m.apply(invoke("b1", "b"))) == ["b1"]
    out = m.apply({"op": "complete", "id": "a1", "epoch": "e1", "attempt": 1, "result": 7, "state": {"n": 1}})
    assert [type(a) for a in out] == [Finished, StartActor] and started(out) == ["a2"]
    assert out[0].rec["status"] == "completed" and out[0].rec["result"] == 7
    rows = m.rows()
    assert rows["results"]["a1"]["result"] == 7 and "a1" not in rows["invocations"]
    assert rows["state"] == {"Svc/a": {"n": 1}}


def test_replay__a_command_at_an_offset_already_applied_changes_nothing() -> None:
    m = Machine()
    m.apply({"op": "activate", "epoch": "e1"})
    m.apply(invoke("i1"), offset=1)
    rows = m.rows()
    assert m.apply(invoke("i1"), offset=1) == [] and m.apply(invoke("zz"), offset=1) == []
    assert m.rows() == rows


def test_duplicate__a_second_invoke_of_a_running_or_finished_id_is_ignored() -> None:
    m = Machine()
    m.apply({"op": "activate", "epoch": "e1"})
    m.apply(invoke("i1"))
    rows = m.rows()
    assert m.apply(invoke("i1", payload={"other": True})) == [] and m.rows() == rows
    m.apply({"op": "complete", "id": "i1", "epoch": "e1", "attempt": 1})
    rows = m.rows()
    assert m.apply(invoke("i1")) == [] and m.rows() == rows


def test_reordering__late_and_foreign_actor_commands_change_nothing() -> None:
    m = Machine()
    m.apply({"op": "activate", "epoch": "e1"})
    m.apply(invoke("i1"))
    out = m.apply({"op": "entry", "id": "i1", "epoch": "e1", "index": 0, "attempt": 1, "entry": sleep_entry(50.0)})
    assert out == [EntryDecided("i1", 0, True)]
    rows = m.rows()
    for late, actions in (
        ({"op": "entry", "id": "i1", "epoch": "e1", "index": 0, "attempt": 1, "entry": {"t": "run"}},  # a copy
         [EntryDecided("i1", 0, True)]),
        ({"op": "entry", "id": "i1", "epoch": "e1", "index": 2, "attempt": 1, "entry": {"t": "run"}},  # a gap
         [EntryDecided("i1", 2, False)]),
        ({"op": "entry", "id": "i1", "epoch": "e0", "index": 1, "attempt": 1, "entry": {"t": "run"}},  # old epoch
         [EntryDecided("i1", 1, False)]),
        ({"op": "complete", "id": "i1", "epoch": "e1", "attempt": 2}, []),  # an attempt not running
        ({"op": "fire", "id": "i1", "epoch": "e1", "at": 50.0}, []),  # nothing armed yet
    ):
        assert m.apply(late) == actions, late
        assert m.rows() == rows, late
    out = m.apply({"op": "suspend", "id": "i1", "epoch": "e1", "attempt": 1, "wake_at": 50.0, "index": 0})
    assert out == [ArmTimer(P, "e1", "i1", 50.0)]
    assert m.rows()["timers"] == {"i1": {"wake_at": 50.0, "p": P}}
    assert m.apply({"op": "fire", "id": "i1", "epoch": "e1", "at": 49.0}) == []  # an earlier timer's fire
    out = m.apply({"op": "fire", "id": "i1", "epoch": "e1", "at": 50.0})
    assert started(out) == ["i1"] and out[0].rec["journal"][-1]["fired"] is True
    assert m.rows()["timers"] == {}


def test_reactivation__rebuilds_the_map_resuming_half_done_work_first_and_rearming_timers() -> None:
    m = Machine()
    m.apply({"op": "activate", "epoch": "e1"})
    m.apply(invoke("late", "a", not_before=NOW + 60))  # delayed: armed
    m.apply(invoke("a1", "a"))
    m.apply(invoke("a2", "a"))
    m.apply(invoke("b1", "b"))
    m.apply({"op": "entry", "id": "a1", "epoch": "e1", "index": 0, "attempt": 1, "entry": {"t": "run", "value": 1}})
    m.apply({"op": "retry", "id": "b1", "epoch": "e1", "attempt": 1, "wake_at": NOW + 5, "error": "boom"})
    rows = m.rows()
    m.restart()  # another worker (or this one after a restart) activates over the same tables
    out = m.apply({"op": "activate", "epoch": "e2"})
    assert out[0] == Activated(P, "e2", 4, 1)
    assert set(map(repr, out[1:])) == set(map(repr, [
        StartActor(P, "e2", rows["invocations"]["a1"]),
        ArmTimer(P, "e2", "b1", NOW + 5),
        ArmTimer(P, "e2", "late", NOW + 60),
    ]))
    assert m.rows() == {**rows, "meta": {f"p{P}": {"epoch": "e2"}}}
    assert m.apply({"op": "activate", "epoch": "e2"}) == [], "a copy of the running activation"
    assert m.apply({"op": "complete", "id": "a1", "epoch": "e1", "attempt": 1}) == [], "the old epoch's actor"
    out = m.apply({"op": "complete", "id": "a1", "epoch": "e2", "attempt": 1})
    assert started(out) == ["a2"]


def test_kill__of_a_sleeping_invocation_cancels_it_finishes_it_and_starts_the_next_of_its_key() -> None:
    m = Machine()
    m.apply({"op": "activate", "epoch": "e1"})
    m.apply(invoke("i1"))
    m.apply(invoke("i2"))
    m.apply({"op": "entry", "id": "i1", "epoch": "e1", "index": 0, "attempt": 1, "entry": sleep_entry(50.0)})
    m.apply({"op": "suspend", "id": "i1", "epoch": "e1", "attempt": 1, "wake_at": 50.0, "index": 0})
    out = m.apply({"op": "kill", "id": "i1"})
    assert [type(a) for a in out] == [CancelActor, Finished, StartActor] and started(out) == ["i2"]
    assert m.rows()["results"]["i1"]["error"] == "KilledError: killed by an operator"
    assert m.rows()["timers"] == {}
    assert m.apply({"op": "kill", "id": "i1"}) == [] and m.apply({"op": "fire", "id": "i1", "epoch": "e1"}) == []


def test_pause_and_resume__the_key_stays_held_while_paused_and_resume_runs_a_fresh_attempt() -> None:
    m = Machine()
    m.apply({"op": "activate", "epoch": "e1"})
    m.apply(invoke("i1"))
    m.apply(invoke("i2"))
    assert m.apply({"op": "fail", "id": "i1", "epoch": "e1", "attempt": 1, "error": "drift", "pause": True}) == []
    assert m.rows()["invocations"]["i1"]["status"] == "paused"
    out = m.apply({"op": "resume", "id": "i1"})
    assert started(out) == ["i1"] and out[0].rec["attempt"] == 0
    assert m.apply({"op": "resume", "id": "i1"}) == [], "running, not paused: a copy changes nothing"


def test_batch__commands_of_one_record_apply_in_their_order_and_a_reread_record_changes_nothing() -> None:
    m = Machine()
    m.apply({"op": "activate", "epoch": "e1"}, offset=1)
    batch = [invoke("a1", "a"), invoke("a2", "a"), invoke("b1", "b")]
    out = [a for i, cmd in enumerate(batch) for a in m.apply(cmd, offset=2, index=i)]
    assert started(out) == ["a1", "b1"]
    rows = m.rows()
    assert rows["invocations"]["a1"]["seq"] < rows["invocations"]["a2"]["seq"] < rows["invocations"]["b1"]["seq"]
    # Read again after a rebalance: every command of the record was applied.
    assert all(m.apply(cmd, offset=2, index=i) == [] for i, cmd in enumerate(batch)) and m.rows() == rows
    # A new activation rebuilds the key's queue in the record's order.
    m.apply({"op": "complete", "id": "a1", "epoch": "e1", "attempt": 1}, offset=3)
    m.apply(invoke("a3", "a"), offset=4)
    out = m.apply({"op": "activate", "epoch": "e2"}, offset=5)
    assert started(out) == ["a2", "b1"] and list(m.state.queues["Svc/a"]) == ["a3"]


def test_batch__rows_of_a_version_with_one_command_per_record_still_queue_first() -> None:
    m = Machine()
    m.apply(invoke("old", "a"), offset=900)
    m.tables.invocations.rows["old"] = (P, {**m.tables.invocations.get("old"), "seq": 900})  # written as a bare offset
    m.apply(invoke("new", "a"), offset=901, index=0)
    out = m.apply({"op": "activate", "epoch": "e1"}, offset=902)
    assert started(out) == ["old"] and list(m.state.queues["Svc/a"]) == ["new"]
