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


def attempts_of(path: str, inv: str) -> list[dict[str, object]]:
    return [e for e in events(path, "attempt") if e["inv"] == inv]


def test_crash__retry_counts_carry_over_and_a_paused_invocation_stays_paused_until_resumed(workers, app_env):
    worker = workers.new(env={"STREAMAPP_SESSION_TIMEOUT": "6"})
    ledger_path = app_env["ledger"]
    drift = send(worker, "/Test/d/DriftOnce/send", {"tag": "drift"})
    harness.wait_for(lambda: worker.invocation(drift)["status"] == "paused", timeout=60,
                     what="the drifting invocation to pause", detail=worker.tail)
    # SlowRetry: 3 attempts, 3 s apart. Sent only now, so the kill lands well before a second attempt.
    flaky = send(worker, "/SlowRetry/r/Flaky/send", {"tag": "crashy", "failures": 2})
    doomed = send(worker, "/SlowRetry/x/Flaky/send", {"tag": "doomed", "failures": 99})
    harness.wait_for(lambda: all(worker.invocation(i)["status"] == "retrying" for i in (flaky, doomed)),
                     timeout=30, what="both first attempts to fail", detail=worker.tail)
    assert worker.invocation(doomed)["attempts"] == 1
    worker.kill()
    before = {inv: len(attempts_of(ledger_path, inv)) for inv in (flaky, doomed, drift)}
    assert before[doomed] < 3 and before[flaky] < 3 and before[drift] == 2, before
    worker.start()

    failed = harness.wait_for(lambda: worker.invocation(doomed)["status"] == "failed" and worker.invocation(doomed),
                              timeout=90, what="the doomed invocation to exhaust its retries", detail=worker.tail)
    # The count carried over the crash: 3 attempts in all, some in each life. A restart
    # that forgot it would have allowed 3 more.
    attempts = attempts_of(ledger_path, doomed)
    assert len(attempts) == 3 and failed["attempts"] == 3, (attempts, failed)
    assert len({e["pid"] for e in attempts}) == 2
    assert "RuntimeError: flaky failure of doomed (after 3 attempts)" == failed["error"]
    done = harness.wait_for(lambda: worker.invocation(flaky)["status"] == "completed" and worker.invocation(flaky),
                            timeout=60, what="the flaky invocation to succeed", detail=worker.tail)
    assert done["result"] == "ok" and len(attempts_of(ledger_path, flaky)) == 3
    dlq = [r for r in dead_letters(app_env["dead_letters"]) if r.headers["streamapp.invocation"] == doomed.encode()]
    assert len(dlq) == 1, f"dead-lettered {len(dlq)} times"
    assert dlq[0].headers["streamapp.error"] == b"RuntimeError: flaky failure of doomed (after 3 attempts)"
    assert dlq[0].key == b"x" and json.loads(dlq[0].value or b"") == {"tag": "doomed", "failures": 99}

    # The paused invocation stayed paused through the restart (the doomed one's retries,
    # seconds after the restart, show the worker was running it all along): not run again,
    # not dead-lettered; it resumes when asked.
    paused = worker.invocation(drift)
    assert paused["status"] == "paused" and "NonDeterminismError" in paused["error"], paused
    assert len(attempts_of(ledger_path, drift)) == 2
    assert [r for r in dead_letters(app_env["dead_letters"]) if r.headers["streamapp.invocation"] == drift.encode()] \
        == []
    status, reply = worker.request("POST", f"/invocations/{drift}/resume")
    assert status == 202, reply
    resumed = harness.wait_for(lambda: worker.invocation(drift)["status"] not in ("paused", "running", "sleeping")
                               and worker.invocation(drift), timeout=60, what="the resumed invocation",
                               detail=worker.tail)
    assert resumed["status"] == "completed" and resumed["result"] == "resumed", resumed
    assert [e["event"] for e in ledger(ledger_path) if e.get("inv") == drift] == ["attempt"] * 3 + ["after"]


def test_crash__a_journaled_send_is_not_sent_again_and_its_target_runs_once(workers, app_env, tmp_path):
    worker = workers.new(env={"STREAMAPP_SESSION_TIMEOUT": "6"})
    ledger_path = app_env["ledger"]
    gates = {name: tmp_path / f"gate-{name}" for name in ("hold", "r1", "r2")}
    # Key t2 is held busy, so r2's target is still queued at the kill; t1 is free, so r1's has run.
    hold = send(worker, "/Test/t2/Relay/send", {"tag": "hold", "gate": str(gates["hold"])})
    r1 = send(worker, "/Test/r1/Relay/send", {"tag": "to-t1", "to": "t1", "gate": str(gates["r1"])})
    r2 = send(worker, "/Test/r2/Relay/send", {"tag": "to-t2", "to": "t2", "gate": str(gates["r2"])})

    def journal(inv: str) -> list[str]:
        return [f"{e['type']} {e['name']}" for e in worker.invocation(inv).get("journal") or []]

    harness.wait_for(lambda: journal(r1) == journal(r2) == ["send send Test/Receive"]
                     and [e["key"] for e in events(ledger_path, "received")] == ["t1"],
                     timeout=60, what="both sends journaled and t1's target run", detail=worker.tail)
    t1_early = events(ledger_path, "received")[0]["inv"]
    harness.wait_for(lambda: worker.invocation(t1_early)["status"] == "completed", timeout=30,
                     what="t1's target to complete", detail=worker.tail)
    queued = [i for i in worker.get("/invocations")["invocations"] if i["method"] == "Test/Receive"]
    assert [(i["key"], i["status"]) for i in queued] == [("t2", "pending")], queued
    first_life = worker.proc.pid if worker.proc else -1
    worker.kill()  # each relay waits at its gate: the send is journaled, the invocation not complete
    assert not events(ledger_path, "after")
    worker.start()
    for gate in gates.values():
        gate.touch()
    results = {}
    for inv in (hold, r1, r2):
        results[inv] = harness.wait_for(
            lambda i=inv: worker.invocation(i)["status"] == "completed" and worker.invocation(i), timeout=60,
            what=f"relay {inv} to complete", detail=worker.tail)
    t1, t2 = results[r1]["result"], results[r2]["result"]
    assert t1 == t1_early
    harness.wait_for(lambda: worker.invocation(t2)["status"] == "completed", timeout=60,
                     what="the queued target to run after the restart", detail=worker.tail)
    received = events(ledger_path, "received")
    assert Counter(e["inv"] for e in received) == {t1: 1, t2: 1}, received
    assert {e["inv"]: (e["key"], e["pid"] == first_life) for e in received} == {t1: ("t1", True), t2: ("t2", False)}
    for inv in (r1, r2):
        assert journal(inv) == ["send send Test/Receive", "run after"]
        assert [e["sent"] for e in events(ledger_path, "after") if e["inv"] == inv] == [results[inv]["result"]]
    assert results[hold]["result"] is None
    # Nothing else was invoked: one Receive per relay, none pending.
    assert worker.get("/invocations")["invocations"] == []


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
