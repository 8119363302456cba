"""Crash recovery, retries and dead letters against the real broker."""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter

from tests import harness
from tests.support.services import ledger


def events(path: str, kind: str) -> list[dict[str, object]]:
    return [e for e in ledger(path) if e["event"] == kind]


def test_crash__sleeps_resume_remaining_time_and_journaled_steps_do_not_rerun(workers, app_env):
    worker = workers.new()
    sleepers = [(f"s{i}", json.dumps({"tag": f"s{i}", "seconds": 10.0})) for i in range(10)]
    busy = [(f"w{i}", json.dumps({"tag": f"w{i}", "work": 6.0})) for i in range(5)]
    harness.produce(app_env["source"], sleepers + busy)
    harness.wait_for(
        lambda: worker.get("/health")["sleeping"] == 10 and len(events(app_env["ledger"], "before")) == 15,
        timeout=30, what="10 sleeping, 5 between steps", detail=worker.tail,
    )
    worker.kill()
    killed_at = time.time()
    assert not events(app_env["ledger"], "after"), "nothing should have finished before the kill"
    worker.start()
    done = harness.wait_for(
        lambda: len(events(app_env["ledger"], "after")) >= 15 and events(app_env["ledger"], "after"),
        timeout=90, what="15 completions after restart", detail=worker.tail,
    )
    before = {e["tag"]: e for e in events(app_env["ledger"], "before")}
    after = {e["tag"]: e for e in done}
    assert Counter(e["tag"] for e in events(app_env["ledger"], "before")) == Counter({t: 1 for t in before}), \
        "a journaled step ran again after the crash"
    assert Counter(e["tag"] for e in done) == Counter({t: 1 for t in after})
    for tag in (t for t, _ in sleepers):
        slept = after[tag]["time"] - before[tag]["time"]
        # Resumed with the remaining time: not skipped (< 10 s) and not restarted from zero
        # (that would end >= 10 s after the restart).
        assert slept >= 10.0, f"{tag} woke early after {slept:.1f}s"
        assert after[tag]["time"] < killed_at + 10.0 or slept < 11.5, f"{tag} restarted its sleep ({slept:.1f}s)"
        assert after[tag]["pid"] != before[tag]["pid"]


def dead_letters(topic: str) -> list[harness.Record]:
    return harness.read_topic(topic)


def test_dead_letters__poison_records_go_to_dlq_with_reason_and_valid_ones_complete(workers, app_env):
    worker = workers.new()
    src = app_env["source"]
    harness.produce(src, [
        ("ok1", json.dumps({"tag": "ok1"})),
        ("bad-json", "{not json"),
        (None, json.dumps({"tag": "nokey"})),
        ("wrong-type", json.dumps({"tag": 5})),
        ("bad-utf8", b"\xff\xfe\x00"),
        ("empty", b""),
        ("ok2", json.dumps({"tag": "ok2"})),
    ])
    harness.wait_for(lambda: len(events(app_env["ledger"], "after")) == 2, timeout=30,
                     what="the two valid records to complete", detail=worker.tail)
    dlq = harness.wait_for(lambda: len(dead_letters(app_env["dead_letters"])) >= 5 and dead_letters(
        app_env["dead_letters"]), timeout=30, what="5 dead letters", detail=worker.tail)
    by_key = {r.key: r for r in dlq}
    assert set(by_key) == {b"bad-json", None, b"wrong-type", b"bad-utf8", b"empty"}
    assert by_key[b"bad-json"].value == b"{not json"
    assert b"not valid JSON" in by_key[b"bad-json"].headers["streamapp.error"]
    assert b"no key" in by_key[None].headers["streamapp.error"]
    assert b"input.tag: expected a string" in by_key[b"wrong-type"].headers["streamapp.error"]
    assert b"UTF-8" in by_key[b"bad-utf8"].headers["streamapp.error"]
    for rec in dlq:
        assert rec.headers["streamapp.source.topic"] == src.encode()
        assert rec.headers["streamapp.handler"] == b"Nap"
        assert "streamapp.source.offset" in rec.headers


def send(worker: harness.Worker, path: str, body: object) -> str:
    status, reply = worker.request("POST", path, body)
    assert status == 202, reply
    return str(reply["invocationId"])


def test_retries__flaky_handler_succeeds_after_backoff_and_terminal_errors_are_not_retried(workers, app_env):
    worker = workers.new()
    flaky = send(worker, "/Test/f/Flaky/send", {"tag": "flaky", "failures": 2})
    terminal = send(worker, "/Test/t/Terminal/send", {"tag": "term"})
    exhausted = send(worker, "/Test/x/Flaky/send", {"tag": "never", "failures": -1})
    drift = send(worker, "/Test/d/Drift/send", {"tag": "drift"})
    harness.wait_for(lambda: any(e["inv"] == flaky for e in events(app_env["ledger"], "after")), timeout=30,
                     what="the flaky invocation to succeed", detail=worker.tail)
    attempts = [e for e in events(app_env["ledger"], "attempt") if e["inv"] == flaky]
    assert len(attempts) == 3
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4, f"backoff not applied: {gaps}"
    dlq = harness.wait_for(lambda: len(dead_letters(app_env["dead_letters"])) >= 3 and dead_letters(
        app_env["dead_letters"]), timeout=60, what="3 dead letters", detail=worker.tail)
    by_inv = {r.headers["streamapp.invocation"].decode(): r for r in dlq}
    assert set(by_inv) == {terminal, exhausted, drift}
    assert b"TerminalError: cannot process term" in by_inv[terminal].headers["streamapp.error"]
    assert b"after 4 attempts" in by_inv[exhausted].headers["streamapp.error"]
    assert len([e for e in events(app_env["ledger"], "attempt") if e["inv"] == exhausted]) == 4
    err = by_inv[drift].headers["streamapp.error"].decode()
    assert "NonDeterminismError" in err and "step-1" in err and "step-2" in err, err
    assert by_inv[terminal].key == b"t"
    assert json.loads(by_inv[terminal].value or b"") == {"tag": "term"}  # the original payload


def test_retry__backoff_survives_a_crash_with_its_attempt_count(workers, app_env):
    worker = workers.new()
    inv = send(worker, "/SlowRetry/r/Flaky/send", {"tag": "crashy", "failures": 2})
    harness.wait_for(lambda: worker.invocation(inv)["status"] == "retrying", timeout=30,
                     what="the first attempt to fail", detail=worker.tail)
    assert worker.invocation(inv)["attempts"] == 1
    worker.kill()
    worker.start()
    done = harness.wait_for(lambda: worker.invocation(inv)["status"] == "completed" and worker.invocation(inv),
                            timeout=90, what="the invocation to succeed after the restart", detail=worker.tail)
    attempts = [e for e in events(app_env["ledger"], "attempt") if e["inv"] == inv]
    # max_attempts=3 and two failures: the count carried over the crash, or a third failure
    # would have been needed after the restart and it would have been dead-lettered.
    assert len(attempts) == 3 and done["result"] == "ok"
    assert len({e["pid"] for e in attempts}) == 2
