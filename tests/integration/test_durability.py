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


# Every bound below is one only a broken runtime misses, whatever the load on the machine:
SLEEP_LATE = 20.0   # the test keeps the worker down until these deadlines have passed
SLEEP_EARLY = 80.0  # ...and these come long after the restarted worker is ready
ADMIT_WITHIN = SLEEP_LATE  # admitting 13 invocations takes a correct worker a few seconds
DOWN_AT_LEAST = 10.0  # so a sleep restarted on recovery would end at least this long after its deadline
RECOVERY_MARGIN = 15.0  # ready this long before the first early deadline; overdue timers fire within it
EARLY_BY = 0.5      # a sleeper may end this much before its deadline (clock reads in two processes)


def test_crash__each_sleep_ends_at_its_original_deadline_and_journaled_steps_do_not_rerun(workers, app_env, tmp_path):
    # The worker is killed with 5 sleepers whose deadlines pass while it is down, 5 whose
    # deadlines come long after it is back, and 3 handlers held between their steps by a
    # gate. What a broken runtime does instead, and the assertion that catches it:
    #   fires every recovered timer at once      an early sleeper wakes ~50 s before its deadline
    #   restarts a sleep from zero on recovery   an early sleeper wakes a whole sleep after the restart
    #   loses or holds back overdue timers       no completion, or a late sleeper done long after recovery
    #   runs a journaled step again              a second "before" in the ledger
    worker = workers.new(env={"STREAMAPP_SESSION_TIMEOUT": "6"})
    ledger_path = app_env["ledger"]
    gate = tmp_path / "gate"
    late = [(f"l{i}", json.dumps({"tag": f"l{i}", "seconds": SLEEP_LATE})) for i in range(5)]
    early = [(f"e{i}", json.dumps({"tag": f"e{i}", "seconds": SLEEP_EARLY})) for i in range(5)]
    busy = [(f"w{i}", json.dumps({"tag": f"w{i}", "gate": str(gate)})) for i in range(3)]
    harness.produce(app_env["source"], late + early + busy)
    # Once a late sleeper wakes, "sleeping" never reaches 10 again: the wait then fails by name.
    harness.wait_for(
        lambda: worker.get("/health")["sleeping"] == 10 and len(events(ledger_path, "before")) == 13,
        timeout=ADMIT_WITHIN, what="10 sleeping, 3 held between their steps", detail=worker.tail,
    )
    worker.kill()
    assert not events(ledger_path, "after"), "nothing should have finished before the kill"
    started = {e["tag"]: float(e["time"]) for e in events(ledger_path, "before")}
    late_deadline = max(started[t] for t, _ in late) + SLEEP_LATE
    down_until = max(late_deadline + 1.0, time.time() + DOWN_AT_LEAST)  # every late deadline passes meanwhile
    time.sleep(max(0.0, down_until - time.time()))
    gate.touch()  # the held handlers may finish once they run again
    restart_at = time.time()
    worker.start()
    ready_at = time.time()
    first_early = min(started[t] for t, _ in early) + SLEEP_EARLY
    # The early sleepers can tell a fire-everything runtime apart only if recovery came well
    # before their deadlines: a restart taking ~40 s is a broken worker, not a busy machine.
    assert ready_at < first_early - RECOVERY_MARGIN, \
        f"the restarted worker took {ready_at - restart_at:.0f}s to be ready"
    done = harness.wait_for(
        lambda: len(events(ledger_path, "after")) >= 13 and events(ledger_path, "after"),
        timeout=SLEEP_EARLY + 120, what="13 completions after restart", detail=worker.tail,
    )
    assert Counter(e["tag"] for e in events(ledger_path, "before")) == Counter({t: 1 for t in started}), \
        "a journaled step ran again after the crash"
    assert Counter(e["tag"] for e in done) == Counter({t: 1 for t in started})
    woke = {str(e["tag"]): float(e["time"]) for e in done}
    for tag, seconds in [(t, SLEEP_LATE) for t, _ in late] + [(t, SLEEP_EARLY) for t, _ in early]:
        deadline = started[tag] + seconds
        assert woke[tag] >= deadline - EARLY_BY, \
            f"{tag} woke {deadline - woke[tag]:.1f}s before its deadline (restarted worker ready at " \
            f"deadline{ready_at - deadline:+.1f}s)"
    for tag, _ in early:
        # A sleep restarted when the restarted worker replayed it ends SLEEP_EARLY after that,
        # at least DOWN_AT_LEAST after the original deadline.
        assert woke[tag] < restart_at + SLEEP_EARLY, \
            f"{tag} woke {woke[tag] - (started[tag] + SLEEP_EARLY):.1f}s after its deadline: sleep restarted?"
    # Overdue timers fire on recovery, so before any timer still to come (a second or two
    # after the worker is ready on a busy machine).
    assert max(woke[t] for t, _ in late) < ready_at + RECOVERY_MARGIN, \
        f"late sleepers woke {[round(woke[t] - ready_at, 1) for t, _ in late]}s after the restarted worker was ready"
    first_life = {e["pid"] for e in events(ledger_path, "before")}
    assert not first_life & {e["pid"] for e in done}, "completions should come from the restarted worker"


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


def test_retries__flaky_succeeds_after_backoff_terminal_is_not_retried_and_drift_pauses(workers, app_env):
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
    paused = harness.wait_for(lambda: worker.invocation(drift)["status"] == "paused" and worker.invocation(drift),
                              timeout=60, what="the drifting invocation to pause", detail=worker.tail)
    assert "NonDeterminismError" in paused["error"] and "step-1" in paused["error"] and "step-2" in paused["error"]
    dlq = harness.wait_for(lambda: len(dead_letters(app_env["dead_letters"])) >= 2 and dead_letters(
        app_env["dead_letters"]), timeout=60, what="2 dead letters", detail=worker.tail)
    by_inv = {r.headers["streamapp.invocation"].decode(): r for r in dlq}
    assert set(by_inv) == {terminal, exhausted}  # a non-determinism pauses, it is not dead-lettered
    assert b"TerminalError: cannot process term" in by_inv[terminal].headers["streamapp.error"]
    assert b"after 4 attempts" in by_inv[exhausted].headers["streamapp.error"]
    assert len([e for e in events(app_env["ledger"], "attempt") if e["inv"] == exhausted]) == 4
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


def test_code_change__renamed_step_pauses_a_sleeper_and_the_rolled_back_code_resumes_it(workers, app_env):
    worker = workers.new(env={"STREAMAPP_SESSION_TIMEOUT": "6"})
    inv = send(worker, "/Test/r/Renamed/send", {"tag": "renamed", "seconds": 3.0})
    harness.wait_for(lambda: worker.invocation(inv)["status"] == "sleeping", timeout=30,
                     what="the invocation to sleep", detail=worker.tail)
    worker.kill()
    worker.env["STREAMAPP_TEST_STEP_NAME"] = "reserve"  # the new deploy renamed the step before the sleep
    worker.start()
    paused = harness.wait_for(
        lambda: worker.invocation(inv)["status"] not in ("sleeping", "running", "pending", None)
        and worker.invocation(inv), timeout=60, what="the timer to fire under the new code", detail=worker.tail)
    assert paused["status"] == "paused", paused
    assert "NonDeterminismError" in paused["error"] and "run 'before'" in paused["error"] \
        and "run 'reserve'" in paused["error"], paused["error"]
    assert paused["journal"] == [{"type": "run", "name": "before"}, {"type": "sleep", "name": "sleep"}]
    # The fail command that paused it follows any dead letter of the same attempt.
    assert dead_letters(app_env["dead_letters"]) == []

    worker.stop()
    del worker.env["STREAMAPP_TEST_STEP_NAME"]  # rolled back
    worker.start()
    assert worker.invocation(inv)["status"] == "paused"  # a restart does not run it again by itself
    status, reply = worker.request("POST", f"/invocations/{inv}/resume")
    assert status == 202, reply
    done = harness.wait_for(lambda: worker.invocation(inv)["status"] in ("completed", "failed")
                            and worker.invocation(inv), timeout=60, what="the resumed invocation", detail=worker.tail)
    assert done["status"] == "completed" and done["result"] == {"tag": "renamed", "step": "before"}, done
    mine = [e for e in ledger(app_env["ledger"]) if e.get("inv") == inv]
    assert [(e["event"], e.get("step")) for e in mine] == [("before", "before"), ("after", None)]
