"""Operator actions end to end on the real broker: cancel, purge, filters and bulk actions (HTTP and CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests import harness
from tests.support.services import ledger

CANCELLED = "InvocationCancelledError: cancelled by an operator"


def cli(worker: harness.Worker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamapp", "invocations", *args, "--url", worker.url],
                          capture_output=True, text=True, timeout=60, cwd=harness.ROOT)


def test_cancel__a_running_invocation_finishes_its_step_runs_no_other_and_its_key_moves_on(workers, app_env,
                                                                                          tmp_path):
    worker = workers.new()
    gate = tmp_path / "gate"
    _, body = worker.request("POST", "/Test/cx/Nap/send", {"tag": "cancelled", "gate": str(gate)})
    inv = body["invocationId"]
    _, body = worker.request("POST", "/Test/cx/Nap/send", {"tag": "behind"})
    behind = body["invocationId"]
    # Its first step ran; it now waits at the gate, before its second step.
    harness.wait_for(lambda: any(e["tag"] == "cancelled" for e in ledger(app_env["ledger"])), timeout=30,
                     what="the first step")
    status, reply = worker.request("POST", f"/invocations/{inv}/cancel")
    assert (status, reply["action"]) == (202, "cancel"), reply
    harness.wait_for(lambda: worker.invocation(inv).get("cancelRequested"), timeout=30, what="the cancel to apply")
    assert worker.invocation(behind)["status"] == "pending"
    gate.touch()
    done = harness.wait_for(lambda: worker.invocation(inv)["status"] == "failed" and worker.invocation(inv),
                            timeout=30, what="the cancelled invocation to end")
    assert done["error"] == CANCELLED
    assert [j["name"] for j in done["journal"]] == ["before"], "no step after the cancel"
    harness.wait_for(lambda: worker.invocation(behind)["status"] == "completed", timeout=30,
                     what="the key to move on")
    events = [(e["event"], e["tag"]) for e in ledger(app_env["ledger"])]
    assert ("before", "cancelled") in events and ("after", "cancelled") not in events, events
    # Acting on a finished invocation says so.
    status, reply = worker.request("POST", f"/invocations/{inv}/kill")
    assert status == 409 and "finished already" in reply["error"], reply


def test_cancel__a_sleeping_invocation_ends_at_once_and_a_call_waiting_for_it_gets_409(workers):
    worker = workers.new()
    _, body = worker.request("POST", "/Test/cs/Nap/send", {"tag": "sleeper", "seconds": 3600})
    inv = body["invocationId"]
    harness.wait_for(lambda: worker.invocation(inv)["status"] == "sleeping", timeout=30, what="sleep")
    result = cli(worker, "cancel", inv)
    assert result.returncode == 0 and f"cancel requested for {inv}" in result.stdout, result
    done = harness.wait_for(lambda: worker.invocation(inv)["status"] == "failed" and worker.invocation(inv),
                            timeout=30, what="the cancel")
    assert done["error"] == CANCELLED
    # The key is free: a call runs now (it would wait an hour behind the sleeper otherwise).
    assert worker.request("POST", "/Test/cs/Nap", {"tag": "next"}, timeout=60)[0] == 200


def test_purge__forgets_a_finished_outcome_keeps_its_id_deduplicated_and_refuses_an_unfinished_one(workers, app_env):
    worker = workers.new()
    _, body = worker.request("POST", "/Test/pg/Nap/send", {"tag": "sleeper", "seconds": 3600})
    sleeper = body["invocationId"]
    harness.wait_for(lambda: worker.invocation(sleeper)["status"] == "sleeping", timeout=30, what="sleep")
    status, reply = worker.request("POST", f"/invocations/{sleeper}/purge")
    assert status == 409 and "not finished" in reply["error"], reply
    _, body = worker.request("POST", "/Test/pg2/Nap/send", {"tag": "done"})
    inv = body["invocationId"]
    harness.wait_for(lambda: worker.invocation(inv)["status"] == "completed", timeout=30, what="completion")
    assert worker.request("POST", f"/invocations/{inv}/purge")[0] == 202
    harness.wait_for(lambda: worker.request("GET", f"/invocations/{inv}")[0] == 404, timeout=30,
                     what="the outcome to be forgotten")
    # Its id still deduplicates until the retention: the same idempotency key does not run it again.
    key = {"idempotency-key": "purged-once"}
    _, body = worker.request("POST", "/Test/pg3/Nap/send", {"tag": "keyed"}, headers=key)
    keyed = body["invocationId"]
    harness.wait_for(lambda: worker.invocation(keyed)["status"] == "completed", timeout=30, what="the keyed one")
    assert worker.request("POST", f"/invocations/{keyed}/purge")[0] == 202
    harness.wait_for(lambda: worker.request("GET", f"/invocations/{keyed}")[0] == 404, timeout=30, what="purge")
    status, reply = worker.request("POST", "/Test/pg3/Nap", {"tag": "keyed"}, headers=key)
    assert status == 410 and "purged" in reply["error"], (status, reply)
    assert len([e for e in ledger(app_env["ledger"]) if e["tag"] == "keyed" and e["event"] == "after"]) == 1

    assert worker.invocation(sleeper)["status"] == "sleeping"


def test_bulk__cancel_every_match_of_a_filter_and_leave_the_rest(workers):
    worker = workers.new()
    ids = {}
    for key in ("b1", "b2", "other"):
        _, body = worker.request("POST", f"/Test/{key}/Nap/send", {"tag": key, "seconds": 3600})
        ids[key] = body["invocationId"]
    _, body = worker.request("POST", "/Test/b1/Nap/send", {"tag": "queued"})  # behind b1's sleeper
    ids["queued"] = body["invocationId"]
    harness.wait_for(lambda: all(worker.invocation(ids[k])["status"] == "sleeping" for k in ("b1", "b2", "other")),
                     timeout=30, what="three sleepers")
    # Filters: by key and status; an unknown status is refused; no filter at all is refused.
    listed = worker.get("/invocations?status=sleeping&key=b1")["invocations"]
    assert [r["id"] for r in listed] == [ids["b1"]]
    assert worker.request("GET", "/invocations?status=napping")[0] == 400
    assert worker.request("POST", "/invocations/bulk/cancel")[0] == 400
    as_json = cli(worker, "--service", "Test", "--status", "sleeping", "--json")
    assert as_json.returncode == 0, as_json
    assert {r["id"] for r in json.loads(as_json.stdout)["invocations"]} == {ids["b1"], ids["b2"], ids["other"]}

    status, reply = worker.request("POST", "/invocations/bulk/cancel?status=sleeping&key=b1")
    assert (status, reply["matched"], reply["invocationIds"]) == (202, 1, [ids["b1"]]), reply
    result = cli(worker, "cancel", "--key", "b2")
    assert result.returncode == 0 and "cancel requested for 1 invocation(s)" in result.stdout, result
    for key in ("b1", "b2"):
        harness.wait_for(lambda k=key: worker.invocation(ids[k])["status"] == "failed", timeout=30,
                         what=f"{key} cancelled")
        assert worker.invocation(ids[key])["error"] == CANCELLED
    harness.wait_for(lambda: worker.invocation(ids["queued"])["status"] == "completed", timeout=30,
                     what="the invocation queued behind b1")
    assert worker.invocation(ids["other"])["status"] == "sleeping"


def test_dead_letters__listed_with_reasons_and_replayed_once_after_the_fix(workers, app_env, tmp_path):
    worker = workers.new()
    fixed = tmp_path / "fixed"
    sent = []
    for key in ("d1", "d2"):
        _, body = worker.request("POST", f"/Test/{key}/Fixable/send", {"tag": key, "fixed": str(fixed)})
        sent.append(body["invocationId"])
    _, body = worker.request("POST", "/Test/d3/Terminal/send", {"tag": "other"})  # another reason: not replayed
    for inv in [*sent, body["invocationId"]]:
        harness.wait_for(lambda i=inv: worker.invocation(i)["status"] == "failed", timeout=30, what="failures")
    listed = harness.wait_for(lambda: len(worker.get("/dead-letters?reason=not+fixed")["deadLetters"]) == 2
                              and worker.get("/dead-letters?reason=not+fixed")["deadLetters"], timeout=30,
                              what="two dead letters")
    assert {d["key"] for d in listed} == {"d1", "d2"} and {d["invocationId"] for d in listed} == set(sent)
    assert all(d["service"] == "Test" and d["handler"] == "Fixable" for d in listed)
    table = subprocess.run([sys.executable, "-m", "streamapp", "dead-letters", "--handler", "Fixable",
                            "--url", worker.url], capture_output=True, text=True, timeout=60, cwd=harness.ROOT)
    assert table.returncode == 0 and "not fixed yet: d1" in table.stdout, table

    # Still broken: the replay fails again, and its dead letter names the one it came from.
    status, reply = worker.request("POST", "/dead-letters/replay?key=d1")
    assert (status, reply["replayed"]) == (202, 1), reply
    first = reply["invocationIds"][0]
    harness.wait_for(lambda: worker.invocation(first)["status"] == "failed", timeout=30, what="the replay")
    again = harness.wait_for(lambda: [d for d in worker.get("/dead-letters?key=d1")["deadLetters"] if d["replayOf"]],
                             timeout=30, what="the replay's dead letter")
    origin = next(d for d in listed if d["key"] == "d1")
    assert again[0]["replayOf"] == f"{origin['topic']}/{origin['partition']}/{origin['offset']}"

    fixed.touch()  # the cause is fixed: replay the original dead letters, twice
    since = min(d["timestamp"] for d in listed)
    until = max(d["timestamp"] for d in listed) + 0.001
    replays = [worker.request("POST", f"/dead-letters/replay?handler=Fixable&since={since}&until={until}")
               for _ in range(2)]
    assert [r[0] for r in replays] == [202, 202] and replays[0][1]["replayed"] == 2, replays
    assert replays[0][1]["invocationIds"] == replays[1][1]["invocationIds"]
    ids = replays[0][1]["invocationIds"]
    assert first in ids  # d1's first replay id: it failed, and a duplicate of it is not run again
    other = next(i for i in ids if i != first)
    done = harness.wait_for(lambda: worker.invocation(other)["status"] == "completed" and worker.invocation(other),
                            timeout=30, what="d2's replay")
    assert done["result"] == "fixed d2"
    time.sleep(1.0)  # a second run of the replay would show up in the ledger by now
    runs = [e for e in ledger(app_env["ledger"]) if e["event"] == "after" and e["tag"] == "d2"]
    assert len(runs) == 1, runs
    assert worker.request("POST", "/dead-letters/replay")[0] == 400  # no filter, no all=true
