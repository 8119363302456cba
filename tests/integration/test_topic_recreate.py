"""A source topic deleted and created again is a new topic: its records run, though offsets restart at 0.

Invocation ids of Kafka-fed invocations are derived from the record's
coordinates; the offsets of a recreated topic start again at 0, so the ids
must also name the topic's incarnation (its topic id), or a new record on a
reused offset is taken for a redelivery of the old one and dropped.
"""

from __future__ import annotations

import json

from tests import harness
from tests.support.services import ledger


def nap(tag: str) -> str:
    return json.dumps({"tag": tag, "seconds": 0.0, "work": 0.0})


def tags(path: str) -> list[str]:
    return [str(e["tag"]) for e in ledger(path) if e["event"] == "after"]


def test_topic_recreate__record_at_a_reused_offset_runs_while_the_worker_consumes(workers, app_env):
    worker = workers.new()
    harness.produce(app_env["source"], [("k", nap("first-life"))])  # offset 0
    harness.wait_for(lambda: "first-life" in tags(app_env["ledger"]), timeout=30,
                     what="the first record to run", detail=worker.tail)

    harness.recreate_topic(app_env["source"])
    harness.produce(app_env["source"], [("k", nap("second-life"))])  # offset 0 again, same key

    harness.wait_for(lambda: "second-life" in tags(app_env["ledger"]), timeout=90,
                     what="the record of the recreated topic to run", detail=worker.tail)
    assert "Duplicate invocation ignored" not in worker.log()
    assert tags(app_env["ledger"]).count("first-life") == 1


def test_topic_recreate__record_at_a_reused_offset_runs_after_the_worker_saw_the_topic_go(workers, app_env):
    """The worker rebalances without the deleted topic, then gets the new one assigned."""
    worker = workers.new()
    source = app_env["source"]
    harness.produce(source, [("k", nap("first-life"))])
    harness.wait_for(lambda: "first-life" in tags(app_env["ledger"]), timeout=30,
                     what="the first record to run", detail=worker.tail)

    def rebalanced_without_it() -> bool:
        text = worker.log()
        gone = text.find(f"Topic {source} not found in cluster metadata")
        return gone >= 0 and "Successfully synced group" in text[gone:]

    harness.recreate_topic(source, while_deleted=lambda: harness.wait_for(
        rebalanced_without_it, timeout=60, what="the worker to rebalance without the topic", detail=worker.tail))
    harness.produce(source, [("k", nap("second-life"))])

    harness.wait_for(lambda: "second-life" in tags(app_env["ledger"]), timeout=90,
                     what="the record of the recreated topic to run", detail=worker.tail)
    assert "Duplicate invocation ignored" not in worker.log()
    assert tags(app_env["ledger"]).count("first-life") == 1


def test_topic_recreate__record_at_a_reused_offset_runs_after_a_restart(workers, app_env):
    worker = workers.new()
    harness.produce(app_env["source"], [("k", nap("first-life"))])
    harness.wait_for(lambda: "first-life" in tags(app_env["ledger"]), timeout=30,
                     what="the first record to run", detail=worker.tail)
    worker.stop()

    harness.recreate_topic(app_env["source"])
    harness.produce(app_env["source"], [("k", nap("second-life"))])
    worker.start()

    harness.wait_for(lambda: "second-life" in tags(app_env["ledger"]), timeout=90,
                     what="the record of the recreated topic to run", detail=worker.tail)
    assert "Duplicate invocation ignored" not in worker.log()
    assert tags(app_env["ledger"]).count("first-life") == 1

