"""Per-key order, no head-of-line blocking, state, redelivery: against the real broker."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from tests import harness
from tests.support.services import ledger


def nap(tag: str, seconds: float = 0.0, work: float = 0.0) -> str:
    return json.dumps({"tag": tag, "seconds": seconds, "work": work})


def completed(path: str) -> list[dict[str, object]]:
    return [e for e in ledger(path) if e["event"] == "after"]


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) spans that were open at one moment."""
    moments = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    open_now = peak = 0
    for _, step in moments:  # at a tie an end (-1) sorts first: touching spans do not overlap
        open_now += step
        peak = max(peak, open_now)
    return peak


def test_hol__200_keys_sleep_at_the_same_time_and_finish_in_key_order(workers, app_env):
    worker = workers.new()
    keys = [f"user{i}" for i in range(200)]
    records = [(k, nap(f"{k}-{n}", seconds=5.0)) for n in (1, 2) for k in keys]
    harness.produce(app_env["source"], records)  # one source partition
    done = harness.wait_for(
        lambda: len(completed(app_env["ledger"])) >= 400 and completed(app_env["ledger"]),
        timeout=120, what="400 invocations to complete", detail=worker.tail,
    )
    # Each invocation's span runs from its first step to its last, across its 5 s sleep. A
    # runtime that runs one invocation per partition at a time (4 partitions) never has more
    # than 4 open at once; here 200 keys sleep together, so even a slow admission of the
    # first 200 (10 a second) keeps dozens open.
    peak = most_at_once([(float(e["started"]), float(e["time"])) for e in done])
    assert peak >= 25, f"at most {peak} invocations were under way at once"
    by_key: dict[str, list[str]] = defaultdict(list)
    for e in sorted(done, key=lambda e: e["time"]):
        by_key[e["key"]].append(e["tag"])
    assert all(tags == [f"{k}-1", f"{k}-2"] for k, tags in by_key.items()), "per-key order broken"
    assert len(by_key) == 200


def test_state__count_is_per_key_and_shared_handler_reads_it(workers, app_env):
    worker = workers.new()
    harness.produce(app_env["source"], [("a", nap("a1")), ("b", nap("b1")), ("a", nap("a2"))])
    harness.wait_for(lambda: worker.request("GET", "/Test/a/Count") == (200, 2), timeout=30,
                     what="a's count to reach 2", detail=worker.tail)
    assert worker.request("GET", "/Test/b/Count") == (200, 1)
    assert worker.request("POST", "/Test/b/Count") == (200, 1)  # shared handlers take GET and POST
    assert len(completed(app_env["ledger"])) == 3


def test_redelivery__same_record_twice_runs_once(workers, app_env):
    """A record delivered again (consumer group reset) maps to the same invocation id."""
    worker = workers.new()
    harness.produce(app_env["source"], [("k", nap("once"))])
    harness.wait_for(lambda: completed(app_env["ledger"]), timeout=30, what="first run", detail=worker.tail)
    worker.stop()
    # An operator rewinds the group: the committed record is delivered again.
    harness.reset_offsets(worker.app_id, app_env["source"])
    worker.start()
    harness.produce(app_env["source"], [("k", nap("marker"))])
    harness.wait_for(lambda: any(e["tag"] == "marker" for e in completed(app_env["ledger"])), timeout=30,
                     what="marker", detail=worker.tail)
    assert "Duplicate invocation ignored" in worker.log()
    tags = [e["tag"] for e in completed(app_env["ledger"])]
    assert tags.count("once") == 1, tags


def test_subscription__missing_source_topic_is_created_and_consumed(workers, app_env):
    missing = harness.unique("not-yet")
    worker = workers.new(env={"STREAMAPP_SUBSCRIPTIONS": f"{missing}=Test/Nap"})
    harness.produce(missing, [("k", nap("created"))])
    harness.wait_for(lambda: any(e["tag"] == "created" for e in completed(app_env["ledger"])), timeout=30,
                     what="the record on the created topic to complete", detail=worker.tail)
    assert worker.get("/subscriptions") == {"subscriptions": [
        {"source": f"kafka://{missing}", "sink": "service://Test/Nap"}]}


def test_shared_handler__answers_while_the_keys_exclusive_invocation_sleeps(workers, app_env):
    worker = workers.new()
    assert worker.request("POST", "/Test/s/Nap", {"tag": "first"})[0] == 200
    status, _ = worker.request("POST", "/Test/s/Nap/send", {"tag": "sleeper", "seconds": 3600})
    assert status == 202
    harness.wait_for(lambda: worker.get("/health")["sleeping"] == 1, timeout=60, what="the invocation to sleep")
    try:  # committed state, answered while the hour-long sleep goes on
        assert worker.request("GET", "/Test/s/Count", timeout=60) == (200, 1)
    except TimeoutError:
        pytest.fail("the shared handler waited for the key's sleeping invocation: no answer in 60 s")
    assert worker.get("/health")["sleeping"] == 1


def test_ack_apply__own_commands_apply_at_their_ack_and_every_step_runs_once_in_key_order(workers, app_env):
    """The owner applies what it writes at the broker's ack (runtime/ackapply.py); the copies read back are skipped."""
    worker = workers.new()
    keys = [f"k{i}" for i in range(40)]
    records = [(k, nap(f"{k}-{n}")) for n in range(5) for k in keys]
    harness.produce(app_env["source"], records)
    harness.wait_for(lambda: len(completed(app_env["ledger"])) >= 200, timeout=90,
                     what="200 invocations to complete", detail=worker.tail)
    steps = [e for e in ledger(app_env["ledger"]) if e["event"] in ("before", "after")]
    assert len(steps) == 400, f"{len(steps)} step side effects for 200 invocations of 2 steps"
    by_key: dict[str, list[str]] = defaultdict(list)
    for e in completed(app_env["ledger"]):
        by_key[e["key"]].append(e["tag"])
    assert all(tags == [f"{k}-{n}" for n in range(5)] for k, tags in by_key.items()), "per-key order broken"
    assert worker.request("GET", "/Test/k7/Count") == (200, 5)
    status, health = worker.request("GET", "/health")
    assert status == 200
    # 200 invokes, 400 entries, 200 completes (fewer records: the outbox groups them): most at their ack.
    assert health["applied_at_ack"] >= 20, health
