"""After kill -9 a worker restores its tables from the changelogs in full; after a clean stop it trusts them."""

from __future__ import annotations

import json

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
