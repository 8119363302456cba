"""Static group membership (STREAMAPP_INSTANCE_ID): a restart reclaims at once; a duplicate id never drives twice."""

from __future__ import annotations

import json
import time

from streamapp.runtime.membership import EX_FENCED
from tests import harness
from tests.support.services import ledger

SESSION = 30.0  # long, so a restart that waited for the session to expire is unmistakable


def ticks(worker: harness.Worker, keys: int) -> list[object]:
    return [worker.request("GET", f"/Test/k{k}/Ticks")[1] for k in range(keys)]


def test_restart_after_sigkill__same_instance_id_gets_its_partitions_back_before_the_session_expires(
        workers, app_env, tmp_path):
    gate = tmp_path / "gate"
    env = {"STREAMAPP_INSTANCE_ID": "static-a", "STREAMAPP_SESSION_TIMEOUT": str(SESSION)}
    worker = workers.new("a", env=env)
    records = [(f"k{i % 10}", json.dumps({"tag": f"t{i:03d}", "gate": str(gate)})) for i in range(60)]
    harness.produce(app_env["source"], records)
    harness.wait_for(lambda: len([e for e in ledger(app_env["ledger"]) if e["event"] == "before"]) >= 10,
                     timeout=60, what="the first invocation of every key to wait at the gate", detail=worker.tail)
    worker.kill()
    gate.touch()
    restarted = time.monotonic()
    worker.start(wait=False)
    harness.wait_for(lambda: any(e["event"] == "after" for e in ledger(app_env["ledger"])), timeout=2 * SESSION,
                     what="a first completion after the restart", interval=0.05, detail=worker.tail)
    first = time.monotonic() - restarted
    assert first < SESSION / 2, f"first completion {first:.1f} s after the restart (session {SESSION:.0f} s)"
    done = harness.wait_for(lambda: (lambda tags: tags if len(tags) >= len(records) else None)(
        {e["tag"] for e in ledger(app_env["ledger"]) if e["event"] == "after"}), timeout=60,
        what="every invocation to complete", detail=worker.tail)
    assert done == {json.loads(v)["tag"] for _, v in records}
    counts = worker.get("/health")
    assert counts["completed"] >= 50, counts  # the 10 at the gate may have been in the tables before the kill


def test_second_process_with_the_same_instance_id__the_first_is_fenced_and_each_invocation_completes_once(
        workers, app_env):
    env = {"STREAMAPP_INSTANCE_ID": "static-dup", "STREAMAPP_SUBSCRIPTIONS": f"{app_env['source']}=Test/Tick"}
    keys, per_key = 8, 40
    first = workers.new("a", env=env)
    harness.produce(app_env["source"], [(f"k{k}", json.dumps({"n": n, "work": 0.02}))
                                        for n in range(per_key // 2) for k in range(keys)])
    harness.wait_for(lambda: first.get("/health")["completed"] >= 20, timeout=60, what="some progress on a")
    second = workers.new("b", env=env, start=False)  # own data dir and port, the same instance id
    second.start(wait=False)
    # Invocations arrive while the second process takes over and the first is fenced.
    harness.produce(app_env["source"], [(f"k{k}", json.dumps({"n": n, "work": 0.02}))
                                        for n in range(per_key // 2, per_key) for k in range(keys)])
    assert first.proc is not None
    harness.wait_for(lambda: first.proc.poll() is not None, timeout=60, what="the fenced worker to exit",
                     detail=first.tail)
    assert first.proc.returncode == EX_FENCED, first.tail()
    assert "group.instance.id=static-dup" in first.log(), first.tail()
    second.wait_ready(timeout=60)
    expected = [{"ticks": per_key, "last": per_key - 1}] * keys
    harness.wait_for(lambda: ticks(second, keys) == expected, timeout=90, what="every tick applied",
                     detail=lambda: f"{ticks(second, keys)}\n{second.tail()}")
    # Each invocation completed exactly once: a second completion would have counted a tick twice.
    time.sleep(2)
    assert ticks(second, keys) == expected
    assert second.proc is not None and second.proc.poll() is None, second.tail()
    assert sorted(second.get("/health")["live_partitions"]) == [0, 1, 2, 3]
