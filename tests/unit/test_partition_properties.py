"""Properties of the partition state machine over generated command sequences (hypothesis).

1. Applying any prefix twice equals applying it once: read again by the same
   state (a rebalance that kept the partition) it asks for nothing; read
   again by a fresh state over the tables it left (a restart, or a new owner
   restoring the changelogs before the commit caught up) it leaves the same
   rows as applying the whole sequence once.
2. Per-key order and exclusivity hold for any interleaving of actor
   outcomes, timer fires, late and duplicated copies, operator commands and
   reactivations: an invocation starts only while no other of its key is
   under way, never while its own actor runs, first starts come in arrival
   order, and once the actors are left to finish, every invocation does.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamapp.runtime.actions import Activated, ArmTimer, Finished, StartActor
from streamapp.runtime.partition_state import summarize
from tests.unit.partition_sim import NOW, Machine, fixed_clock, invoke, sleep_entry

IDS = ["i0", "i1", "i2", "i3"]
KEY_OF = {"i0": "a", "i1": "a", "i2": "b", "i3": "a"}
EPOCHS = ["e1", "e2"]
DELAYED = NOW + 5  # not_before of a delayed invoke
SETTINGS = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def _clock(monkeypatch: pytest.MonkeyPatch) -> None:
    fixed_clock(monkeypatch)


def commands_() -> st.SearchStrategy[dict[str, Any]]:
    """Any command of the log of one partition: current, stale or duplicated alike (no ``resume``: see below)."""
    ident = st.sampled_from(IDS)
    epoch = st.sampled_from(EPOCHS)
    attempt = st.integers(1, 2)
    return st.one_of(
        st.builds(lambda i, d: invoke(i, KEY_OF[i], not_before=DELAYED if d else None), ident, st.booleans()),
        st.builds(lambda e: {"op": "activate", "epoch": e}, epoch),
        st.builds(lambda i, e, n, a, s: {"op": "entry", "id": i, "epoch": e, "index": n, "attempt": a,
                                         "entry": sleep_entry(0.0) if s else {"t": "run", "value": n}},
                  ident, epoch, st.integers(0, 2), attempt, st.booleans()),
        st.builds(lambda i, e, a, n: {"op": "suspend", "id": i, "epoch": e, "attempt": a, "wake_at": 0.0,
                                      "index": n}, ident, epoch, attempt, st.integers(0, 2)),
        st.builds(lambda i, e, a: {"op": "retry", "id": i, "epoch": e, "attempt": a, "wake_at": 0.0,
                                   "error": "boom"}, ident, epoch, attempt),
        st.builds(lambda i, e, a, r: {"op": "complete", "id": i, "epoch": e, "attempt": a, "result": r,
                                      "state": {"last": i, "n": r}}, ident, epoch, attempt, st.integers(0, 3)),
        st.builds(lambda i, e, a, pause: {"op": "fail", "id": i, "epoch": e, "attempt": a, "error": "no",
                                          "pause": pause}, ident, epoch, attempt, st.booleans()),
        st.builds(lambda i, e, back: {"op": "fire", "id": i, "epoch": e, "at": back}, ident, epoch,
                  st.integers(0, 3)),
        st.builds(lambda i: {"op": "kill", "id": i}, ident),
        st.builds(lambda i: {"op": "cancel", "id": i}, ident),
        st.builds(lambda i: {"op": "purge", "id": i}, ident),
    )


# ``resume`` carries nothing that tells a late copy: applied again after the
# invocation it resumed was paused once more, it resumes it again. The
# property holds without it; the test below pins down that known gap.


def realistic(cmds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sequence as a log can hold it.

    A command naming an invocation comes after its ``invoke`` (actors,
    timers and operators act on invocations that exist), and one carrying
    an epoch after that epoch's ``activate`` (its actors and timers start
    when it is applied). Every sleep and retry wakes at
    its own time (a clock moves on), and a fire names one of the times armed
    before it (its ``at`` holds how many parks back), or a delayed invoke's.
    """
    seen: set[str] = set()
    epochs: set[str] = set()
    wakes = [DELAYED]
    kept = []
    for position, cmd in enumerate(cmds):
        cmd = dict(cmd)
        if cmd["op"] == "invoke":
            seen.add(cmd["id"])
        elif cmd["op"] == "activate":
            epochs.add(cmd["epoch"])
        elif cmd["id"] not in seen or cmd.get("epoch", "-") not in (*epochs, "-"):
            continue
        elif cmd["op"] == "entry" and cmd["entry"].get("t") == "sleep":
            cmd["entry"] = sleep_entry(NOW + 100 + position)
        elif cmd["op"] in ("suspend", "retry"):
            cmd["wake_at"] = NOW + 100 + position
            wakes.append(cmd["wake_at"])
        elif cmd["op"] == "fire":
            cmd["at"] = wakes[max(0, len(wakes) - 1 - cmd["at"])]
        kept.append(cmd)
    return kept


@SETTINGS
@given(st.lists(commands_(), max_size=30).map(realistic), st.data())
def test_apply__any_prefix_applied_twice_equals_it_applied_once(cmds: list[dict[str, Any]], data: Any) -> None:
    k = data.draw(st.integers(0, len(cmds)), label="prefix")
    once = Machine()
    for offset, cmd in enumerate(cmds):
        once.apply(cmd, offset)

    again = Machine()
    for offset, cmd in enumerate(cmds[:k]):
        again.apply(cmd, offset)
    for offset, cmd in enumerate(cmds[:k]):  # read again, same process: already applied
        assert again.apply(cmd, offset) == []
    again.restart()  # read again from the last commit by a fresh state over the tables
    for offset, cmd in enumerate(cmds):
        again.apply(cmd, offset)
    assert again.rows() == once.rows()


@SETTINGS
@given(st.lists(commands_(), max_size=30).map(realistic))
def test_summary__lists_every_unfinished_invocation_as_its_row_says(cmds: list[dict[str, Any]]) -> None:
    """The in-memory summaries a list reads (no row decoded) agree with the rows, from an activation on."""
    m = Machine()
    m.apply({"op": "activate", "epoch": "e9"})
    for cmd in cmds:
        m.apply(cmd)
    rows = m.rows()["invocations"]
    assert m.state.summary == {inv_id: summarize(rec) for inv_id, rec in rows.items()}
    m.restart()  # another process: its activation builds them from the rows
    m.apply({"op": "activate", "epoch": "e10"})
    assert m.state.summary == {inv_id: summarize(rec) for inv_id, rec in m.rows()["invocations"].items()}


def test_resume__a_late_copy_after_the_invocation_paused_again_changes_nothing() -> None:
    m = Machine()
    pause = {"op": "fail", "id": "i0", "epoch": "e1", "attempt": 1, "error": "drift", "pause": True}
    for cmd in ({"op": "activate", "epoch": "e1"}, invoke("i0"), pause, {"op": "resume", "id": "i0"}, pause):
        m.apply(cmd)
    m.apply({"op": "resume", "id": "i0"}, offset=3)  # the resume again, after a restart
    m.restart()
    m.apply({"op": "resume", "id": "i0"}, offset=3)
    assert m.rows()["invocations"]["i0"]["status"] == "paused"


class Leader:
    """Plays the actors and the scheduler of the partition's leader, and checks every start the machine asks for."""

    def __init__(self) -> None:
        self.m = Machine()
        self.epoch = "e0"
        self.running: dict[str, dict[str, Any]] = {}  # id -> what its actor was started with
        self.armed: dict[str, float] = {}  # id -> wake_at
        self.under_way: dict[str, str] = {}  # key -> the invocation started and not finished
        self.first_seq: dict[str, int] = {}  # key -> seq of the last invocation started for the first time
        self.started_once: set[str] = set()
        self.invoked: set[str] = set()
        self.finished: set[str] = set()
        self.sent: list[dict[str, Any]] = []

    def send(self, cmd: dict[str, Any]) -> None:
        self.sent.append(cmd)
        for action in self.m.apply(cmd):
            if isinstance(action, Activated):
                self.epoch = action.epoch
                self.running.clear()  # the old actors stopped: their commands are fenced
                self.armed.clear()
            elif isinstance(action, StartActor):
                rec = action.rec
                key = rec["key"]
                assert rec["id"] not in self.running, f"two actors for {rec['id']}"
                assert self.under_way.get(key, rec["id"]) == rec["id"], f"{key}: {rec['id']} beside another"
                if rec["id"] not in self.started_once:
                    assert rec["seq"] > self.first_seq.get(key, -1), f"{key}: {rec['id']} started out of order"
                    self.first_seq[key] = rec["seq"]
                    self.started_once.add(rec["id"])
                self.under_way[key] = rec["id"]
                self.running[rec["id"]] = rec
            elif isinstance(action, ArmTimer):
                self.armed[action.id] = action.wake_at
            elif isinstance(action, Finished):
                self.finished.add(action.rec["id"])
                self.running.pop(action.rec["id"], None)
                self.armed.pop(action.rec["id"], None)
                if self.under_way.get(action.rec["key"]) == action.rec["id"]:
                    del self.under_way[action.rec["key"]]

    def outcome(self, inv_id: str, kind: str) -> None:
        """The running actor of ``inv_id`` ends its attempt with ``kind``."""
        rec = self.running.pop(inv_id)
        base = {"id": inv_id, "epoch": self.epoch, "attempt": rec["attempt"] + 1}
        n = len(rec["journal"])
        if kind == "step":
            self.running[inv_id] = rec  # goes on
            self.send({**base, "op": "entry", "index": n, "entry": {"t": "run", "value": n}})
            rec["journal"] = [*rec["journal"], {"t": "run", "value": n}]
        elif kind == "sleep":
            self.send({**base, "op": "entry", "index": n, "entry": sleep_entry(NOW + 5 + n)})
            self.send({**base, "op": "suspend", "wake_at": NOW + 5 + n, "index": n})
        elif kind == "retry":
            self.send({**base, "op": "retry", "wake_at": NOW + 7, "error": "boom"})
        elif kind == "complete":
            self.send({**base, "op": "complete", "result": 1, "state": {"by": inv_id}})
        else:
            self.send({**base, "op": "fail", "error": "no", "pause": kind == "pause"})

    def drain(self) -> None:
        """Let every actor finish and every timer fire; resume what is paused."""
        for _ in range(200):
            if self.running:
                self.outcome(next(iter(self.running)), "complete")
            elif self.armed:
                inv_id, at = next(iter(self.armed.items()))
                del self.armed[inv_id]
                self.send({"op": "fire", "id": inv_id, "epoch": self.epoch, "at": at})
            elif paused := [i for i, r in self.m.rows()["invocations"].items() if r["status"] == "paused"]:
                self.send({"op": "resume", "id": paused[0]})
            else:
                return


@SETTINGS
@given(st.data())
def test_apply__per_key_order_and_exclusivity_hold_for_any_interleaving(data: Any) -> None:
    leader = Leader()
    leader.send({"op": "activate", "epoch": "e1"})
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        choices = ["invoke", "duplicate", "kill", "reactivate"]
        if leader.running:
            choices.append("actor")
        if leader.armed:
            choices.append("fire")
        choice = data.draw(st.sampled_from(choices))
        if choice == "invoke":
            inv_id = f"n{len(leader.invoked)}"
            leader.invoked.add(inv_id)
            key = data.draw(st.sampled_from(["a", "b", "c"]))
            delayed = data.draw(st.booleans())
            leader.send(invoke(inv_id, key, not_before=NOW + 3 if delayed else None))
        elif choice == "actor":
            inv_id = data.draw(st.sampled_from(sorted(leader.running)))
            leader.outcome(inv_id, data.draw(st.sampled_from(["step", "sleep", "retry", "complete", "fail", "pause"])))
        elif choice == "fire":
            inv_id = data.draw(st.sampled_from(sorted(leader.armed)))
            leader.send({"op": "fire", "id": inv_id, "epoch": leader.epoch, "at": leader.armed.pop(inv_id)})
        elif choice == "duplicate" and leader.sent:
            leader.send(dict(data.draw(st.sampled_from(leader.sent))))  # a resend, landing late
        elif choice == "kill" and leader.invoked:
            leader.send({"op": "kill", "id": data.draw(st.sampled_from(sorted(leader.invoked)))})
        elif choice == "reactivate":
            leader.send({"op": "activate", "epoch": f"e{len(leader.sent)}"})
    leader.drain()
    assert leader.finished == leader.invoked, "an invocation was stranded"
    assert leader.m.rows()["invocations"] == {} and leader.m.rows()["timers"] == {}
