"""After kill -9 a worker restores its tables from the changelogs in full; after a clean stop it trusts them."""

from __future__ import annotations

import json

from aiokafka import AIOKafkaProducer

from tests import harness

NOT_CLEAN = "The last stop was not clean"


def test_restart_after_kill__tables_come_back_from_the_changelogs_and_after_a_clean_stop_from_disk(
        workers, app_env):
    worker = workers.new(env={"STREAMAPP_SUBSCRIPTIONS": f"{app_env['source']}=Test/Tick"})
    harness.produce(app_env["source"], [(f"k{i % 3}", json.dumps({"n": i // 3, "work": 0})) for i in range(30)])
    harness.wait_for(lambda: worker.get("/health")["completed"] >= 30, timeout=90, what="30 ticks")

    def ticks() -> list[object]:
        return [worker.request("GET", f"/Test/k{k}/Ticks")[1] for k in range(3)]

    expected = [{"ticks": 10, "last": 9}] * 3
    assert ticks() == expected
    worker.kill()
    worker.start()
    assert NOT_CLEAN in worker.log(), worker.tail()
    harness.wait_for(lambda: ticks() == expected, timeout=60, what="state restored from the changelogs",
                     detail=lambda: str(ticks()))
    worker.stop()
    assert worker.proc is not None and worker.proc.returncode == 0, worker.tail()
    before = worker.log().count(NOT_CLEAN)
    worker.start()
    assert worker.log().count(NOT_CLEAN) == before, "a clean stop must leave the tables trusted"
    harness.wait_for(lambda: ticks() == expected, timeout=60, what="state after a clean restart",
                     detail=lambda: str(ticks()))


def produce_copy(topic: str, record: harness.Record) -> None:
    """Send ``record`` again to its partition, headers and all: a late write of a deposed worker."""

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=harness.bootstrap(), acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, key=record.key, value=record.value, partition=record.partition,
                                         headers=list(record.headers.items()))
        finally:
            await producer.stop()

    harness.run_async(go())


def test_restore__a_deposed_workers_late_table_write_does_not_replace_its_successors_rows(workers, app_env):
    # A worker frozen past its session sends what its producer held when it
    # wakes: rows of commands its successor applied again, and went past.
    worker = workers.new()
    changelog = f"{worker.app_id}-state-changelog"

    def in_changelog(row: dict[str, int]) -> bool:
        return any(r.value and json.loads(r.value) == row for r in harness.read_topic(changelog))

    for n in range(3):
        assert worker.request("POST", "/Test/k/Tick", {"n": n}) == (200, n + 1)
        # A commit writes the net effect of the rows since the last one: wait for this version's.
        harness.wait_for(lambda n=n: in_changelog({"ticks": n + 1, "last": n}), timeout=30,
                         what=f"state row of tick {n} in the changelog")
    rows = [r for r in harness.read_topic(changelog) if r.value and json.loads(r.value).get("last") is not None]
    first = next(r for r in rows if json.loads(r.value or b"{}") == {"ticks": 1, "last": 0})
    produce_copy(changelog, first)
    worker.stop()

    successor = workers.new("w1")  # its own data dir: every table restored from the changelogs
    assert successor.request("GET", "/Test/k/Ticks") == (200, {"ticks": 3, "last": 2}), successor.tail()
    assert "Restore skips a deposed writer's record" in successor.log()
