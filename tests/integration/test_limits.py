"""Record limits read from the broker; a key whose state outgrows them moves on (issue 10, item A)."""

from __future__ import annotations

import json
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamapp.runtime import limits
from tests import harness

LIMIT = 300_000  # max.message.bytes of the test's internal topic and changelogs (the broker default is ~1 MB)
TABLES = ("invocations", "results", "timers", "state", "meta")


def create_limited_topics(names: list[str], partitions: int, compacted: bool) -> None:
    config = {"max.message.bytes": str(LIMIT), **({"cleanup.policy": "compact"} if compacted else {})}

    async def go() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=harness.bootstrap())
        await admin.start()
        try:
            await admin.create_topics([NewTopic(n, partitions, 1, topic_configs=config) for n in names])
        finally:
            await admin.close()

    harness.run_async(go())


def read_limits(topics: dict[str, str], cap: int) -> limits.Limits:
    async def go() -> limits.Limits:
        admin = AIOKafkaAdminClient(bootstrap_servers=harness.bootstrap())
        await admin.start()
        try:
            return await limits.read(admin, topics, cap)
        finally:
            await admin.close()

    return harness.run_async(go())  # type: ignore[no-any-return]


def test_limits__read_from_topic_configs_and_the_broker_for_missing_topics(broker: str) -> None:
    limited, plain = harness.unique("lim"), harness.unique("plain")
    create_limited_topics([limited], 1, compacted=False)
    harness.create_topics([plain])
    found = read_limits({"command": limited, "state": plain, "results": harness.unique("missing")}, 8 << 20)
    assert found.command == LIMIT
    # A topic without its own setting has the broker's message.max.bytes, as has a topic not created yet.
    assert found.rows["state"] == found.rows["results"] != LIMIT
    assert read_limits({"command": limited}, 100_000).command == 100_000  # the producer's max_request_size


def test_state_outgrowing_the_record_limit__invocation_fails_with_a_dead_letter_and_the_key_moves_on(
    workers: harness.WorkerFactory, app_env: dict[str, Any],
) -> None:
    app_id = workers.app_id
    create_limited_topics([f"{app_id}-invocations"], 4, compacted=False)
    create_limited_topics([f"{app_id}-{t}-changelog" for t in TABLES], 4, compacted=True)
    worker = workers.new()
    status, _ = worker.request("POST", "/PackageTracker/pkg/RegisterPackage", {"finalDestination": "Berlin"})
    assert status == 200
    ids = []
    for n in range(6):  # 60 kB each: the fifth takes the state past the limit
        update = {"timestamp": f"t{n}", "location": f"{n}" * 60_000}
        status, body = worker.request("POST", "/PackageTracker/pkg/UpdateLocation/send", update)
        assert status == 202, body
        ids.append(body["invocationId"])
    status, body = worker.request("POST", "/PackageTracker/pkg/UpdateLocation/send",
                                  {"timestamp": "t6", "location": "Berlin"})
    ids.append(body["invocationId"])

    def finished() -> list[Any]:
        views = [worker.invocation(i) for i in ids]
        return [v["status"] for v in views] if all(v["status"] in ("completed", "failed") for v in views) else []

    statuses = harness.wait_for(finished, timeout=90, what="every update to finish", detail=worker.tail)
    assert statuses == ["completed"] * 4 + ["failed", "failed", "completed"]
    error = worker.invocation(ids[4])["error"]
    assert error.startswith("TooLargeError: ") and f"over the {LIMIT}-byte record limit" in error, error
    info = worker.get("/PackageTracker/pkg/getPackageInfo")
    assert [loc["timestamp"] for loc in info["locations"]] == ["t0", "t1", "t2", "t3", "t6"]

    def dead_letters() -> dict[str, str]:
        records = harness.read_topic(app_env["dead_letters"])
        return {r.headers["streamapp.invocation"].decode(): r.headers["streamapp.error"].decode() for r in records}

    dead = harness.wait_for(lambda: len(dead_letters()) >= 2 and dead_letters(), timeout=30,
                            what="two dead letters")
    assert dead == {ids[4]: error, ids[5]: worker.invocation(ids[5])["error"]}
    assert json.loads(harness.read_topic(app_env["dead_letters"])[0].value or b"")["timestamp"] == "t4"
