"""Operator actions end to end on the real broker: cancel, purge, filters and bulk actions (HTTP and CLI)."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_purge__forgets_a_finished_outcome_and_refuses_an_unfinished_one(workers):
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
