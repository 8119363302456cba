"""HTTP ingress: call, send, idempotency, delays, errors, operator actions."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from streamapp.runtime.commands import partition_for
from tests import harness
from tests.support.services import ledger


def test_call__waits_and_returns_the_result_and_idempotency_key_returns_the_same_invocation(workers):
    worker = workers.new()
    status, body = worker.request("POST", "/Test/http1/Nap", {"tag": "call"})
    assert (status, body) == (200, {"tag": "call", "count": 1})
    hdr = {"idempotency-key": "abc"}
    first = worker.request("POST", "/Test/http1/Nap", {"tag": "idem"}, headers=hdr)
    again = worker.request("POST", "/Test/http1/Nap", {"tag": "idem"}, headers=hdr)
    assert first == again == (200, {"tag": "idem", "count": 2})
    s1, sent1 = worker.request("POST", "/Test/http1/Nap/send", {"tag": "s"}, headers={"idempotency-key": "k2"})
    s2, sent2 = worker.request("POST", "/Test/http1/Nap/send", {"tag": "s"}, headers={"idempotency-key": "k2"})
    assert s1 == s2 == 202 and sent1["invocationId"] == sent2["invocationId"]
    inv = sent1["invocationId"]
    info = harness.wait_for(lambda: worker.invocation(inv)["status"] == "completed"
                            and worker.invocation(inv), timeout=30, what="the send to complete")
    assert info["result"] == {"tag": "s", "count": 3}
    assert [j["name"] for j in info["journal"]] == ["before", "after"]


def test_send__delay_holds_the_invocation_without_blocking_the_key(workers, app_env):
    worker = workers.new()
    # An hour-long delay: however slow the machine, it is still scheduled when the test ends.
    held_at = time.time()
    status, held = worker.request("POST", "/Test/dk/Nap/send?delay=1h", {"tag": "held"})
    assert status == 202, held
    sent_at = time.time()
    status, _ = worker.request("POST", "/Test/dk/Nap/send?delay=3s", {"tag": "late"})
    assert status == 202
    try:  # a minute: the call queued behind the hour-long delay would wait for the hour
        status, body = worker.request("POST", "/Test/dk/Nap", {"tag": "now"}, timeout=60)
    except TimeoutError:
        pytest.fail("a delayed invocation must not block its key: the call did not return in 60 s")
    assert status == 200 and body["tag"] == "now", (status, body)
    late = harness.wait_for(lambda: [e for e in ledger(app_env["ledger"]) if e["tag"] == "late"
                                     and e["event"] == "before"], timeout=60, what="the delayed invocation")
    assert late[0]["time"] - sent_at >= 3.0
    info = worker.invocation(held["invocationId"])
    assert info["status"] == "scheduled" and info["wakeAt"] >= held_at + 3600, info
    assert "held" not in {e["tag"] for e in ledger(app_env["ledger"])}


def test_errors__bad_requests_get_json_errors_and_the_worker_keeps_serving(workers):
    worker = workers.new(env={"STREAMAPP_MAX_BODY_BYTES": "1000"})
    cases = [
        ("POST", "/Test/e/Nap", b"{not json", 400, "not valid JSON"),
        ("POST", "/Test/e/Nap", b'{"tag": 7}', 400, "input.tag: expected a string"),
        ("POST", "/Test/e/Nap", b"[]", 400, "expected an object"),
        ("POST", "/Nope/e/Nap", b"{}", 404, "unknown service Nope"),
        ("POST", "/Test/e/Nope", b"{}", 404, "unknown handler Test/Nope"),
        ("GET", "/Test/e/Nap", None, 405, "use POST"),
        ("PUT", "/Test/e/Nap", b"{}", 405, "not allowed"),
        ("POST", "/Test/e/Nap", b'{"tag": "' + b"x" * 2000 + b'"}', 413, ""),
        ("POST", "/Test/e/Nap/send?delay=soon", b'{"tag": "x"}', 400, "not a duration"),
        ("GET", "/invocations/inv_doesnotexist", None, 404, "unknown invocation"),
    ]
    for method, path, raw, want, text in cases:
        status, body = worker.request(method, path, raw=raw)
        assert status == want, (method, path, status, body)
        assert isinstance(body, dict) and "error" in body and text in body["error"], (path, body)
    assert worker.request("POST", "/Test/e/Nap", {"tag": "fine"})[0] == 200


def test_operator__paused_invocation_resumes_and_kill_lets_the_key_move_on(workers, app_env):
    worker = workers.new()
    status, body = worker.request("POST", "/Paused/p/Stuck/send", {"tag": "stuck", "failures": 3})
    inv = body["invocationId"]
    harness.wait_for(lambda: worker.invocation(inv)["status"] == "paused", timeout=30,
                     what="the invocation to pause after exhausting its attempts")
    listing = subprocess.run([sys.executable, "-m", "streamapp", "invocations", "--url", worker.url],
                             capture_output=True, text=True, timeout=60, cwd=harness.ROOT)
    assert listing.returncode == 0 and inv in listing.stdout and "paused" in listing.stdout, listing
    resume = subprocess.run([sys.executable, "-m", "streamapp", "invocations", "resume", inv, "--url", worker.url],
                            capture_output=True, text=True, timeout=60, cwd=harness.ROOT)
    assert resume.returncode == 0, resume.stderr
    done = harness.wait_for(lambda: worker.invocation(inv)["status"] == "completed"
                            and worker.invocation(inv), timeout=30, what="the resumed invocation")
    assert done["result"] == "unstuck"

    # A forever-failing invocation blocks its key until it is killed.
    _, body = worker.request("POST", "/Paused/q/Stuck/send", {"tag": "forever", "failures": -1})
    blocked = body["invocationId"]
    _, body = worker.request("POST", "/Paused/q/Stuck/send", {"tag": "next", "failures": 0})
    behind = body["invocationId"]
    harness.wait_for(lambda: worker.invocation(blocked)["status"] == "paused", timeout=30,
                     what="pause")
    assert worker.invocation(behind)["status"] == "pending"
    status, _ = worker.request("POST", f"/invocations/{blocked}/kill")
    assert status == 202
    harness.wait_for(lambda: worker.invocation(behind)["status"] == "completed", timeout=30,
                     what="the key to move on after the kill")
    killed = worker.invocation(blocked)
    assert killed["status"] == "failed" and "killed" in killed["error"]


RETENTION = 15  # the deduplicated call below comes well within it, however slow the machine


def test_retention__finished_outcomes_expire_and_an_expired_idempotency_key_runs_again(workers):
    worker = workers.new(env={"STREAMAPP_RESULTS_RETENTION": str(RETENTION)})
    hdr = {"idempotency-key": "once"}
    assert worker.request("POST", "/Test/ret/Nap", {"tag": "r"}, headers=hdr) == (200, {"tag": "r", "count": 1})
    assert worker.request("POST", "/Test/ret/Nap", {"tag": "r"}, headers=hdr) == (200, {"tag": "r", "count": 1})
    _, sent = worker.request("POST", "/Test/ret/Nap/send", {"tag": "s"})
    inv = sent["invocationId"]
    info = harness.wait_for(lambda: worker.invocation(inv)["status"] == "completed" and worker.invocation(inv),
                            timeout=30, what="the send")
    last_seen = time.time()  # when its outcome was last readable
    while worker.request("GET", f"/invocations/{inv}")[0] == 200:
        last_seen = time.time()
        assert last_seen < info["finished"] + RETENTION + 120, "the finished invocation never expired"
        time.sleep(0.2)
    assert last_seen >= info["finished"] + RETENTION - 0.5, "expired before its retention"
    assert "Expired finished invocations" in worker.log()
    # Past the retention the key is no longer deduplicated: it runs again (count 3: r, s, r).
    assert worker.request("POST", "/Test/ret/Nap", {"tag": "r"}, headers=hdr) == (200, {"tag": "r", "count": 3})
    assert worker.get("/state/Test/ret")["state"] == {"count": 3}


RESTORED_RETENTION = 25  # long enough for the second worker to start and restore before the outcomes are due


def test_retention__outcomes_restored_on_a_new_worker_expire_at_their_retention(workers):
    """The expiry index is local to each worker: a worker that restored the outcomes rebuilds it."""
    env = {"STREAMAPP_RESULTS_RETENTION": str(RESTORED_RETENTION)}
    first = workers.new("a", env=env)
    sent = [first.request("POST", f"/Test/rest{i}/Nap/send", {"tag": f"t{i}"})[1]["invocationId"] for i in range(6)]
    finished = {inv: harness.wait_for(lambda inv=inv: (lambda info: info["status"] == "completed" and info)(
        first.invocation(inv)), timeout=30, what=f"invocation {inv} to complete")["finished"] for inv in sent}
    first.stop()  # a clean stop: it leaves the group, the new worker is assigned every partition at once
    second = workers.new("b", env=env)  # its own, empty, data directory: every outcome comes from the changelogs
    assert {inv: second.invocation(inv).get("finished") for inv in sent} == finished, "outcomes not restored"
    last_seen: dict[str, float | None] = dict.fromkeys(sent, time.time())
    while any(last_seen.values()):
        for inv, seen in list(last_seen.items()):
            if seen is None:
                continue
            if second.request("GET", f"/invocations/{inv}")[0] == 200:
                last_seen[inv] = time.time()
                assert time.time() < finished[inv] + RESTORED_RETENTION + 120, f"{inv} never expired"
            else:
                assert seen >= finished[inv] + RESTORED_RETENTION - 0.5, f"{inv} expired before its retention"
                last_seen[inv] = None
        time.sleep(0.2)
    assert "Expired finished invocations" in second.log()
    assert "Expired finished invocations" not in first.log()


def test_send_to_one_worker__its_keys_owner_knows_the_invocation_at_once__never_404(workers):
    """A send another worker accepted (202) is in the log, maybe not yet in the owner's tables: a lookup
    waits for the owner to apply what the log held when asked, instead of calling the invocation unknown."""
    a = workers.new("a")
    b = workers.new("b")
    harness.wait_for(lambda: sorted(p for w in (a, b) for p in w.get("/health")["live_partitions"]) == [0, 1, 2, 3],
                     timeout=60, what="a and b to share the 4 partitions")
    mine = set(a.get("/health")["live_partitions"])
    keys = [k for k in (f"own{n}" for n in range(200)) if partition_for(f"Test/{k}", 4) in mine][:30]
    answers = []
    for n, key in enumerate(keys):
        status, body = b.request("POST", f"/Test/{key}/Nap/send", {"tag": f"s{n}"})  # b makes it durable itself
        assert status == 202, body
        answers.append(a.request("GET", f"/invocations/{body['invocationId']}"))  # a owns the key
    assert [status for status, _ in answers] == [200] * len(keys), answers
