"""Two and three workers in one consumer group: kills and rebalances."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter, defaultdict

from tests import harness
from tests.support.services import ledger


def events(path: str, kind: str) -> list[dict[str, object]]:
    return [e for e in ledger(path) if e["event"] == kind]


def workload(keys: int, per_key: int, work: float) -> list[tuple[str, str]]:
    return [(f"k{k}", json.dumps({"tag": f"k{k}-{n:03d}", "work": work})) for n in range(per_key) for k in range(keys)]


def check_order(done: list[dict[str, object]]) -> None:
    by_key: dict[str, list[str]] = defaultdict(list)
    first_after: dict[str, dict[str, object]] = {}
    for e in sorted(done, key=lambda e: float(e["time"])):  # type: ignore[arg-type]
        tag = str(e["tag"])
        if tag not in first_after:
            first_after[tag] = e
            by_key[str(e["key"])].append(tag)
    for key, tags in by_key.items():
        assert tags == sorted(tags), f"{key} completed out of order: {tags}"


def test_two_workers__one_sigkilled_mid_run__all_complete_and_no_step_runs_twice_on_a_live_worker(
    workers, app_env
):
    a = workers.new("a")
    b = workers.new("b")
    harness.wait_for(lambda: a.get("/health")["ready"] and b.get("/health")["ready"], timeout=60,
                     what="both workers ready after the rebalance")
    assert a.get("/health")["live_partitions"] and b.get("/health")["live_partitions"], "partitions not shared"
    records = workload(keys=30, per_key=10, work=0.3)
    harness.produce(app_env["source"], records)
    harness.wait_for(lambda: len(events(app_env["ledger"], "after")) >= 40, timeout=60, what="some progress")
    b_pid = b.proc.pid if b.proc else -1
    b.kill()
    killed_at = time.time()
    done = harness.wait_for(
        lambda: len({e["tag"] for e in events(app_env["ledger"], "after")}) >= len(records)
        and events(app_env["ledger"], "after"),
        timeout=120, what="all invocations to complete on the surviving worker", detail=a.tail,
    )
    assert {e["tag"] for e in done} == {json.loads(v)["tag"] for _, v in records}, "an invocation was lost"
    counts = Counter(str(e["tag"]) for e in done)
    for tag, n in counts.items():
        if n > 1:
            # Only a step that was running in the killed worker may run again.
            runs = [e for e in done if e["tag"] == tag]
            assert n == 2 and any(e["pid"] == b_pid and float(e["time"]) <= killed_at for e in runs), runs
    starts = Counter(str(e["tag"]) for e in events(app_env["ledger"], "before"))
    assert all(n <= 2 for n in starts.values())
    check_order(done)


def test_rebalance__worker_joins_and_leaves_mid_run__partitions_move_without_concurrent_execution(
    workers, app_env, tmp_path
):
    a = workers.new("a")
    # Per key 24 invocations of 0.5 s: the 5th to 12th wait at a gate opened once c is ready,
    # the rest at one opened once c has left, so both moves find invocations between their
    # steps on every key however long c takes to start.
    joined, left = tmp_path / "joined", tmp_path / "left"
    records = [(f"k{k}", json.dumps({"tag": f"k{k}-{n:03d}", "work": 0.5,
                                     "gate": str(left if n >= 12 else joined if n >= 4 else "")}))
               for n in range(24) for k in range(30)]
    harness.produce(app_env["source"], records)
    harness.wait_for(lambda: len(events(app_env["ledger"], "after")) >= 30, timeout=60, what="some progress")
    c = workers.new("c")  # joins: partitions move from a to c while invocations run
    assert c.proc is not None and a.proc is not None
    c_pid = c.proc.pid
    harness.wait_for(lambda: c.get("/health")["live_partitions"], timeout=60, what="c to drive partitions",
                     detail=c.tail)
    joined.touch()
    harness.wait_for(lambda: sum(e["pid"] == c_pid for e in events(app_env["ledger"], "after")) >= 20,
                     timeout=60, what="c to complete invocations", detail=c.tail)
    assert len({e["tag"] for e in events(app_env["ledger"], "after")}) < len(records), "workload too short"
    c.stop()  # leaves cleanly: its partitions go back to a
    left.touch()
    done = harness.wait_for(
        lambda: len({e["tag"] for e in events(app_env["ledger"], "after")}) >= len(records)
        and events(app_env["ledger"], "after"),
        timeout=120, what="all invocations to complete", detail=a.tail,
    )
    counts = Counter(str(e["tag"]) for e in done)
    assert set(counts) == {json.loads(v)["tag"] for _, v in records}
    # A revoked worker stops its actors before the handover, so no step ran twice.
    assert [t for t, n in counts.items() if n > 1] == []
    assert {e["pid"] for e in done} == {a.proc.pid, c_pid}
    check_order(done)


def test_http__any_worker_answers_for_any_key(workers):
    a = workers.new("a")
    b = workers.new("b")
    harness.wait_for(lambda: a.get("/health")["ready"] and b.get("/health")["ready"]
                     and len(a.get("/health")["live_partitions"]) + len(b.get("/health")["live_partitions"]) == 4,
                     timeout=60, what="both workers to share the partitions")
    for n in range(10):
        first, second = (a, b) if n % 2 else (b, a)
        assert first.request("POST", f"/Test/k{n}/Nap", {"tag": f"x{n}"}) == (200, {"tag": f"x{n}", "count": 1})
        assert second.request("POST", f"/Test/k{n}/Nap", {"tag": f"y{n}"}) == (200, {"tag": f"y{n}", "count": 2})
        assert first.request("GET", f"/Test/k{n}/Count") == (200, 2)
        assert second.request("GET", f"/state/Test/k{n}") == (200, {"service": "Test", "key": f"k{n}",
                                                                     "state": {"count": 2}})
        status, sent = first.request("POST", f"/Test/k{n}/Nap/send", {"tag": f"z{n}"})
        assert status == 202
        inv = sent["invocationId"]
        for worker in (a, b):
            harness.wait_for(lambda w=worker, i=inv: w.invocation(i)["status"] == "completed", timeout=30,
                             what=f"{inv} to be visible as completed from {worker.log_path.name}")
    listing = a.get("/invocations")["invocations"]
    assert listing == [], "nothing should be unfinished"


def test_pause_past_session__woken_worker_runs_no_step_of_invocations_taken_over(workers, app_env):
    """SIGSTOP a worker mid-handler past its session: the other takes over; after SIGCONT
    the woken worker must not run a step of an invocation the other one already finished."""
    env = {"STREAMAPP_SESSION_TIMEOUT": "6"}
    a = workers.new("a", env=env)
    b = workers.new("b", env=env)
    harness.wait_for(lambda: a.get("/health")["ready"] and b.get("/health")["ready"], timeout=60,
                     what="both workers ready after the rebalance")
    assert b.get("/health")["live_partitions"], "b drives no partition"
    records = workload(keys=20, per_key=8, work=1.0)  # handlers sit between their steps most of the time
    harness.produce(app_env["source"], records)
    assert a.proc is not None and b.proc is not None
    b_pid = b.proc.pid
    harness.wait_for(lambda: sum(e["pid"] == b_pid for e in events(app_env["ledger"], "before")) >= 10,
                     timeout=60, what="b to be mid-handler")
    os.killpg(b_pid, signal.SIGSTOP)
    try:
        started = {str(e["tag"]) for e in events(app_env["ledger"], "before") if e["pid"] == b_pid}
        in_flight = started - {str(e["tag"]) for e in events(app_env["ledger"], "after")}
        assert in_flight, "b had no invocation between its steps"
        harness.wait_for(lambda: in_flight <= {str(e["tag"]) for e in events(app_env["ledger"], "after")},
                         timeout=60, what="a to finish the invocations b was running", detail=a.tail)
    finally:
        woke_at = time.time()
        os.killpg(b_pid, signal.SIGCONT)
    done = harness.wait_for(
        lambda: len({e["tag"] for e in events(app_env["ledger"], "after")}) >= len(records)
        and events(app_env["ledger"], "after"),
        timeout=120, what="all invocations to complete", detail=lambda: a.tail() + "\n---\n" + b.tail(),
    )
    stale = [e for e in ledger(app_env["ledger"])
             if e["pid"] == b_pid and float(e["time"]) >= woke_at and e["tag"] in in_flight]
    assert stale == [], f"the woken worker ran steps of invocations a had finished: {stale[:5]}"
    assert "stalled" in b.log(), b.tail()
    check_order(done)
