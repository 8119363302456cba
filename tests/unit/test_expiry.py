"""Broker-free tests of results expiry (``expire`` commands, streamapp/runtime/engine.py).

Outcomes are indexed by finish time in the ``expiry`` index; each command
drops the oldest ones up to the retention, with bounded work.
"""

from __future__ import annotations

import time
import types
from typing import Any

import pytest

from streamapp.runtime import commands
from streamapp.runtime import expiry as expiry_module
from streamapp.runtime import finish as finish_module
from streamapp.runtime import partition as partition_module
from streamapp.runtime.store import expiry_key
from tests.unit.engine_fakes import EngineRig

P = 0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The engine's clocks: wall time (finish times) set by the test; monotonic time [1] a second
    further on at each reading unless the test sets a step [2] (the worker's expiry budget refills)."""
    now = [1_000.0, 0.0, 1.0]

    def monotonic() -> float:
        now[1] += now[2]
        return now[1]

    fake = types.SimpleNamespace(time=lambda: now[0], monotonic=monotonic)
    monkeypatch.setattr(partition_module, "time", fake)
    monkeypatch.setattr(finish_module, "time", fake)  # finish times
    monkeypatch.setattr(expiry_module, "time", fake)  # the expiry budget
    return now


def invoke(inv_id: str, key: str) -> dict[str, Any]:
    return {"op": "invoke", "id": inv_id, "service": "Svc", "handler": "h", "key": key, "payload": None,
            "not_before": None, "source": None}


def finish(rig: EngineRig, epoch: str, clock: list[float], at: float, ids: list[str]) -> None:
    clock[0] = at
    for inv_id in ids:
        rig.apply(P, invoke(inv_id, f"k-{inv_id}"))
        rig.apply(P, {"op": "complete", "id": inv_id, "epoch": epoch, "attempt": 1, "result": inv_id, "state": {}})
        assert rig.status(inv_id) == "completed"


def expire(rig: EngineRig, before: float) -> tuple[int, int]:
    """Apply one expire command; return (index rows, results rows) it read."""
    index, results = rig.tables.expiry, rig.tables.results
    seen = (index.visited, results.visited)
    rig.apply(P, {"op": "expire", "before": before})
    return index.visited - seen[0], results.visited - seen[1]


def fresh_rig(clock: list[float]) -> tuple[EngineRig, str]:
    """A partition of a new deployment: activated, and its first expire command already applied."""
    rig = EngineRig()
    epoch = rig.activate(P)
    expire(rig, before=0.0)
    return rig, epoch


def test_expire__outcomes_finished_before_the_cutoff_go_newer_ones_stay_and_stay_deduplicated(clock):
    rig, epoch = fresh_rig(clock)
    finish(rig, epoch, clock, 1_000.0, ["old1", "old2"])
    finish(rig, epoch, clock, 1_500.0, ["new1"])
    rec = rig.tables.results.get("new1")
    assert rig.tables.expiry.rows[expiry_key(rec["finished"], "new1")] == (P, "new1")  # same partition as the row

    expire(rig, before=1_200.0)

    assert rig.tables.results.get("old1") is None and rig.tables.results.get("old2") is None
    assert rig.status("new1") == "completed"
    assert sorted(rig.tables.expiry.rows) == [expiry_key(1_500.0, "new1")]
    started = len(rig.actors.started)
    rig.apply(P, invoke("new1", "k-new1"))  # still within the retention: a duplicate
    assert len(rig.actors.started) == started and rig.status("new1") == "completed"
    rig.apply(P, invoke("old1", "k-old1"))  # past it: runs again
    assert rig.actors.started[-1][2] == "old1" and rig.status("old1") == "pending"


def test_expire__at_most_expire_max_per_command_and_repeated_commands_finish_the_job(clock, monkeypatch):
    monkeypatch.setattr(expiry_module, "EXPIRE_MAX", 5)
    rig, epoch = fresh_rig(clock)
    finish(rig, epoch, clock, 1_000.0, [f"old{i:02d}" for i in range(23)])
    finish(rig, epoch, clock, 2_000.0, [f"new{i}" for i in range(4)])
    left = [23 - 5, 23 - 10, 23 - 15, 23 - 20, 0, 0]
    for remaining in left:
        index_read, results_read = expire(rig, before=1_500.0)
        assert index_read <= 5, "read more of the index than one command's share"
        assert results_read == 0, "scanned the results table"
        old = [i for i in rig.tables.results.rows if i.startswith("old")]
        assert len(old) == remaining
    assert sorted(rig.tables.results.rows) == ["new0", "new1", "new2", "new3"]
    assert len(rig.tables.expiry.rows) == 4
    expire(rig, before=2_500.0)
    assert rig.tables.results.rows == {} and rig.tables.expiry.rows == {}


def test_expire__an_index_row_older_than_where_the_last_command_stopped_still_expires_under_a_new_epoch(clock):
    rig, epoch = fresh_rig(clock)
    finish(rig, epoch, clock, 1_000.0, ["a"])
    finish(rig, epoch, clock, 1_100.0, ["b"])
    expire(rig, before=1_050.0)
    assert rig.status("a") is None and rig.status("b") == "completed"
    # Another worker, its clock behind, takes the partition over and finishes one.
    rig.engine.expect_activation(P, "e2")
    rig.apply(P, {"op": "activate", "epoch": "e2", "at": 0.0})
    finish(rig, "e2", clock, 900.0, ["c"])
    expire(rig, before=1_050.0)
    assert rig.status("c") is None and rig.status("b") == "completed"


def test_expire__outcomes_written_before_the_index_are_swept_in_bounded_steps(clock, monkeypatch):
    """A worker upgraded in place: results rows without index rows are indexed, or dropped if past the retention."""
    monkeypatch.setattr(expiry_module, "SWEEP_MAX", 4)
    rig = EngineRig()
    epoch = rig.activate(P)
    finish(rig, epoch, clock, 1_000.0, [f"old{i}" for i in range(6)])
    finish(rig, epoch, clock, 2_000.0, [f"new{i}" for i in range(5)])
    for key in list(rig.tables.expiry.rows):  # as the previous version wrote them: no index
        rig.tables.current = P
        del rig.tables.expiry[key]
        rig.tables.current = None

    assert rig.tables.index_swept(P) is None
    reads = []
    for _ in range(4):
        reads.append(expire(rig, before=1_500.0)[1])
    assert max(reads) <= 4 + 1, reads
    assert rig.tables.index_swept(P) is True
    assert sorted(rig.tables.results.rows) == [f"new{i}" for i in range(5)]
    assert sorted(rig.tables.expiry.rows) == sorted(expiry_key(2_000.0, f"new{i}") for i in range(5))
    expire(rig, before=2_500.0)
    assert rig.tables.results.rows == {} and rig.tables.expiry.rows == {}


def test_expire__a_worker_drops_at_most_expire_rate_a_second_over_all_its_partitions(clock, monkeypatch):
    monkeypatch.setattr(expiry_module, "EXPIRE_MAX", 10)
    monkeypatch.setattr(expiry_module, "EXPIRE_RATE", 80)
    rig = EngineRig()
    for p, epoch in ((0, "e0"), (1, "e1")):
        rig.engine.expect_activation(p, epoch)
        rig.apply(p, {"op": "activate", "epoch": epoch, "at": 0.0})
        rig.apply(p, {"op": "expire", "before": 0.0})
        clock[0] = 1_000.0
        for i in range(30):
            rig.apply(p, invoke(f"p{p}-{i}", f"k{p}-{i}"))
            rig.apply(p, {"op": "complete", "id": f"p{p}-{i}", "epoch": epoch, "attempt": 1, "result": None,
                          "state": {}})

    def left(p: int) -> int:
        return sum(1 for i in rig.tables.results.rows if i.startswith(f"p{p}-"))

    clock[2] = 0.0  # no time passes
    rig.apply(0, {"op": "expire", "before": 2_000.0})
    rig.apply(1, {"op": "expire", "before": 2_000.0})
    assert (left(0), left(1)) == (20, 30), "the worker's budget is one command's worth at most"
    clock[1] += 0.0625  # 5 rows' worth at 80/s
    rig.apply(1, {"op": "expire", "before": 2_000.0})
    assert (left(0), left(1)) == (20, 25)
    clock[1] += 1.0
    rig.apply(1, {"op": "expire", "before": 2_000.0})
    assert left(1) == 15, "never more than EXPIRE_MAX per command"


def test_expiry_due__only_partitions_holding_outcomes_past_the_retention_get_an_expire_command() -> None:
    rig = EngineRig()
    p = commands.partition_for("Svc/k", 4)
    epoch = rig.activate(p)
    rig.apply(p, {"op": "expire", "before": 0.0})  # first command: the one-time sweep of unindexed rows ends
    assert not rig.engine.expiry_due(p, time.time()), "nothing finished: no command, no record"
    rig.apply(p, {"op": "invoke", "id": "i1", "service": "Svc", "handler": "h", "key": "k", "payload": None})
    rig.apply(p, {"op": "complete", "id": "i1", "epoch": epoch, "attempt": 1, "result": 1, "state": {}})
    assert not rig.engine.expiry_due(p, time.time() - 60), "finished within the retention"
    assert rig.engine.expiry_due(p, time.time() + 1)
    rig.apply(p, {"op": "expire", "before": time.time() + 1})
    assert rig.status("i1") is None
    assert not rig.engine.expiry_due(p, time.time() + 1)
