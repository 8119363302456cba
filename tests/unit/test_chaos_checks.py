"""The chaos driver's plan and checks, without a broker: each check fires on the fault it names."""

from __future__ import annotations

import datetime
from collections import Counter
from typing import Any

import pytest

from chaos import checks, cluster, faults, logs, workload
from chaos.proxy import Call
from chaos.steps import Disturbance, Entry, EpochStart

T0 = 1_800_000_000.0


def inv(n: int) -> str:
    return f"inv_e{n}"


class World:
    """Evidence of a run in which every event completed, one user per partition; tests then break it."""

    def __init__(self, per_user: int = 3, users: int = 2) -> None:
        self.source: list[checks.SourceEvent] = []
        self.posts: list[dict[str, Any]] = []
        self.feeds: list[dict[str, Any]] = []
        self.calls: list[Call] = []
        self.status: dict[str, str | None] = {}
        self.dead: list[checks.DeadLetter] = []
        self.dup_posts = self.dup_feeds = 0
        seq = 0
        for s in range(per_user):
            for u in range(users):
                n = len(self.source)
                user = f"u{u}"
                self.source.append(checks.SourceEvent(n, user, f"{user} post {s}", inv(n)))
                t = T0 + 10 + n
                seq += 1
                self.posts.append({"postId": f"p{n}", "userId": user, "content": f"{user} post {s}",
                                   "idempotencyKey": f"{inv(n)}:0", "createdAt": seq})
                seq += 1
                self.feeds.append({"userId": user, "postId": f"p{n}", "idempotencyKey": f"{inv(n)}:2", "seq": seq})
                self.calls += [
                    Call("w0.1", "POST", "/posts", f"{inv(n)}:0", f"p{n}", t, t + 0.01, 200),
                    Call("w0.1", "GET", f"/posts/p{n}/status", None, f"p{n}", t + 0.1, t + 0.11, 200),
                    Call("w0.1", "POST", f"/feeds/{user}", f"{inv(n)}:2", f"p{n}", t + 0.2, t + 0.21, 200),
                ]
        self.activations = [checks.Activation(T0, "w0.1", 0), checks.Activation(T0, "w0.1", 1)]
        self.events: list[Disturbance] = []
        self.entries: list[Entry] = []
        self.epochs: list[EpochStart] = []
        self.bad: list[checks.BadSource] = []

    def check(self) -> checks.Report:
        ev = checks.Evidence(self.source, self.posts, self.feeds, self.dup_posts, self.dup_feeds, self.dead,
                             self.status, self.calls, self.activations, lambda user: int(user[1:]),
                             self.events, self.entries, self.epochs, session_timeout=6.0, bad=self.bad)
        return checks.check(ev, faults=3)


def kinds(report: checks.Report) -> Counter[str]:
    return Counter(v.kind for v in report.violations)


def test_checks__a_clean_run_passes_and_counts_duplicate_attempts_without_failing():
    world = World()
    world.dup_posts, world.dup_feeds = 2, 1
    report = world.check()
    assert report.ok, report.violations
    assert report.summary() == (
        "faults=3 events=6 lost=0 duplicated=0 order_violations=0 stuck=0 dead_lettered=0 serial_violations=0 "
        "overlaps=0 stale_calls=0 crashes=0 journaled_reruns=0 reruns=0 faults_effective=0 bad_records=0 "
        "bad_missing=0 bad_duplicated=0 bad_redelivered=0 bad_wrong_reason=0 dup_attempts=3 (posts=2 feeds=1)"
    )


@pytest.mark.parametrize(("status", "field"), [(None, "lost"), ("completed", "lost"), ("sleeping", "stuck"),
                                               ("running", "stuck"), ("no worker answered", "stuck")])
def test_checks__an_event_without_a_feed_update_is_lost_or_stuck_by_the_engines_status(status, field):
    world = World()
    world.feeds = [f for f in world.feeds if f["postId"] != "p3"]
    world.status[inv(3)] = status
    report = world.check()
    assert getattr(report, field) == 1 and kinds(report) == {field: 1}
    assert "post created, no feed update" in report.violations[0].detail


def test_checks__an_event_without_a_post_is_lost():
    world = World()
    world.posts = [p for p in world.posts if p["postId"] != "p0"]
    world.feeds = [f for f in world.feeds if f["postId"] != "p0"]
    report = world.check()
    assert report.lost == 1 and "no post" in report.violations[0].detail


def test_checks__a_second_post_or_feed_update_with_another_key_is_a_duplicate():
    world = World()
    world.posts.append({**world.posts[1], "postId": "p1b", "idempotencyKey": f"{inv(1)}:4", "createdAt": 99})
    world.feeds.append({**world.feeds[2], "idempotencyKey": f"{inv(2)}:6", "seq": 100})
    world.posts.append({"postId": "px", "userId": "u0", "content": "u0 post 0", "idempotencyKey": "inv_other:0",
                        "createdAt": 101})
    report = world.check()
    assert report.duplicated == 3 and kinds(report) == {"duplicated": 3}


def test_checks__dead_letters_fail_the_run():
    world = World()
    world.dead.append(checks.DeadLetter("u0", "TerminalError: boom", inv(0), 0))
    assert world.check().dead_lettered == 1


def test_checks__each_bad_record_must_be_dead_lettered_once_with_its_reason_or_again_only_after_a_fault():
    world = World()
    reasons = workload.REASONS
    for n, kind in enumerate(workload.BAD_KINDS):
        world.bad.append(checks.BadSource(100 + n, kind, reasons[kind]))
        world.dead.append(checks.DeadLetter(None, f"InvalidInputError: {reasons[kind]}: ...", None, 100 + n))
    report = world.check()
    assert report.ok and report.bad_records == 5 and report.dead_lettered == 0, report.violations
    world.dead.append(checks.DeadLetter("bad0", f"InvalidInputError: {reasons['bad-json']}", None, 100))  # again
    world.dead = [d if d.offset != 103 else checks.DeadLetter(d.key, d.error, None, 103, T0) for d in world.dead]
    # Dead-lettered again after its worker was killed before the offset was committed: allowed.
    world.dead.append(checks.DeadLetter("bad3", f"InvalidInputError: {reasons['bad-utf8']}", None, 103, T0 + 20))
    world.events.append(Disturbance(T0 + 2, "kill_worker", "w0.1"))
    world.dead = [d for d in world.dead if d.offset != 101]  # the no-key record never dead-lettered
    world.dead = [d if d.offset != 102 else checks.DeadLetter("bad2", "TerminalError: boom", "inv_x", 102)
                  for d in world.dead]  # dead-lettered by a handler, not refused at the source
    report = world.check()
    assert (report.bad_duplicated, report.bad_missing, report.bad_wrong_reason) == (1, 1, 1), report.violations
    assert report.bad_redelivered == 1 and any("offset 103" in n and "kill_worker" in n for n in report.notes)
    assert kinds(report) == {"bad_duplicated": 1, "bad_missing": 1, "bad_wrong_reason": 1}
    assert "bad_duplicated=1" in report.summary()


def test_workload__bad_records_interleave_with_events_in_order():
    events = workload.events(1, 40, 4)
    bad = workload.bad_records(7)
    mixed = workload.interleave(1, events, bad)
    assert [e for e in mixed if isinstance(e, workload.Event)] == events
    assert [b for b in mixed if isinstance(b, workload.BadRecord)] == bad
    assert mixed == workload.interleave(1, events, bad)  # the seed names the positions
    assert {b.kind for b in bad} == set(workload.BAD_KINDS) and bad[1].key is None


def test_checks__feed_updates_out_of_source_order_are_order_violations():
    world = World()
    # u0's events are offsets 0, 2, 4: the second one's post and feed update come before the first one's.
    first, second = world.posts[0], world.posts[2]
    first["createdAt"], second["createdAt"] = second["createdAt"], first["createdAt"]
    world.feeds[0]["seq"], world.feeds[2]["seq"] = world.feeds[2]["seq"], world.feeds[0]["seq"]
    report = world.check()
    assert (report.order_violations, report.serial_violations) == (1, 0)
    assert "source offset 2" in report.violations[0].detail
    assert {inv(0), inv(2)} <= report.subjects


def test_checks__an_invocation_starting_before_the_previous_one_of_its_key_finished_is_a_serial_violation():
    world = World()
    world.posts[2]["createdAt"] = world.feeds[0]["seq"] - 1  # u0's second post, before u0's first feed update
    report = world.check()
    assert (report.order_violations, report.serial_violations) == (0, 1)


def test_late_admissions__names_source_records_skipped_and_read_again_after_later_ones():
    admissions = [checks.Admission(o, T0 + o * 0.1) for o in range(10)]
    admissions += [checks.Admission(o, T0 + 60 + o) for o in range(3, 6)]  # read again after a rebalance
    admissions = [a for a in admissions if not (3 <= a.source_offset <= 5 and a.time < T0 + 60)]
    assert checks.late_admissions(admissions) == [
        f"source offsets 3-5 admitted at {checks.clock(T0 + 63)}, after offset 6 (admitted "
        f"{checks.clock(T0 + 0.6)}): skipped, then read again"
    ]
    assert checks.late_admissions([checks.Admission(o, T0 + o * 0.1) for o in range(10)]) == []


def test_checks__a_worker_resuming_an_invocation_another_worker_ran_meanwhile_is_an_overlap():
    # The seed-1 incident: w0.1 creates the post, freezes, w1.1 takes over and runs the
    # invocation, then w0.1 wakes up and carries on with its next steps.
    world = World()
    t = T0 + 10 + 4  # event 4 (user u0, partition 0); w0.1's calls at t, t+0.1, t+0.2
    world.calls = [c for c in world.calls if not (c.key == f"{inv(4)}:2")]
    world.activations.append(checks.Activation(t + 0.05, "w1.1", 0))
    world.events.append(Disturbance(t - 7, "pause_worker", "w0.1"))  # its session expired at t
    world.calls += [
        Call("w1.1", "POST", "/posts", f"{inv(4)}:0", "p4", t + 0.06, t + 0.07, 200),
        Call("w1.1", "POST", "/feeds/u0", f"{inv(4)}:4", "p4", t + 0.08, t + 0.09, 200),
        Call("w0.1", "POST", "/feeds/u0", f"{inv(4)}:2", "p4", t + 5.0, t + 5.01, 200),
    ]
    report = world.check()
    assert report.overlaps == 1 and report.stale_calls == 2  # w0.1's poll and feed update after w1.1 took over
    assert kinds(report) == {"overlap": 1}
    assert "w0.1 ran it from" in report.violations[0].detail and "w1.1 from" in report.violations[0].detail


def test_checks__a_step_under_a_superseded_epoch_is_stale_even_when_the_new_owner_is_gone():
    world = World()
    t = T0 + 10 + 4
    world.activations.append(checks.Activation(t + 0.15, "w1.1", 0))  # before w0.1's feed update at t+0.2
    report = world.check()
    assert (report.overlaps, report.stale_calls) == (0, 1)
    assert kinds(report) == {"stale": 1}
    assert "w0.1 made update-feed" in report.violations[0].detail
    assert "w1.1 had activated the partition" in report.violations[0].detail


def test_checks__a_handover_after_the_old_owner_stopped_calling_is_not_an_overlap():
    world = World()
    t = T0 + 10 + 4
    world.events.append(Disturbance(t + 0.22, "kill_worker", "w0.1"))
    world.activations.append(checks.Activation(t + 0.25, "w1.1", 0))  # after w0.1's last call for event 4
    world.calls.append(Call("w1.1", "POST", "/feeds/u0", f"{inv(4)}:2", "p4", t + 0.3, t + 0.31, 200))
    report = world.check()
    assert report.ok, report.violations


def test_plan__a_seed_names_one_schedule_and_every_fault_is_undone():
    plan = faults.plan(1, 60, gap=(3, 8), session_timeout=6)
    assert plan == faults.plan(1, 60, gap=(3, 8), session_timeout=6)
    assert plan != faults.plan(2, 60, gap=(3, 8), session_timeout=6)
    assert {a.kind for a in plan if a.is_fault} == set(faults.FAULTS)  # the short run covers every kind
    assert all(a.at < 60 for a in plan if a.is_fault)
    undo = {"kill_worker": "restart_worker", "pause_worker": "resume_worker", "kill_broker": "start_broker"}
    for i, action in enumerate(plan):
        if action.kind in undo:
            later = [a for a in plan[i + 1:] if a.kind == undo[action.kind] and a.target == action.target]
            assert later, f"{action} is never undone"


def test_plan__faults_only_when_possible():
    for seed in range(30):
        running, broker = {"w0", "w1"}, True
        for action in faults.plan(seed, 600, session_timeout=10):
            if action.kind in ("pause_worker", "remove_worker"):
                assert len(running) >= 2 and action.target in running
            if action.kind == "kill_worker":
                assert action.target in running
            if action.kind == "add_worker":
                assert action.target not in running
            if action.kind == "kill_broker":
                assert broker
            if action.kind in ("kill_worker", "pause_worker", "remove_worker"):
                running.discard(action.target or "")
            if action.kind in ("restart_worker", "resume_worker", "add_worker"):
                running.add(action.target or "")
            broker = action.kind != "kill_broker" if action.kind in ("kill_broker", "start_broker") else broker


# -- incarnations in the worker logs ----------------------------------------------
def log_line(t: float, pid: int, text: str) -> str:
    return f"[{datetime.datetime.fromtimestamp(t).strftime('%Y-%m-%d %H:%M:%S,%f')[:-3]}] [{pid}] [INFO] {text}"


def test_activations_from_log__a_reused_pid_names_the_incarnation_that_logged_the_line():
    # w0.1 (pid 2161) activates partition 0 and runs; much later w0.23 gets pid 2161 again.
    log = "\n".join([
        f"==== chaos: starting w0.1 at {T0 - 5:.3f}",
        log_line(T0, 2161, "Partition activated partition=0 unfinished=0 resumed=0 sleeping=0"),
        f"==== chaos: starting w0.2 at {T0 + 100:.3f}",
        log_line(T0 + 101, 4022, "Partition activated partition=1 unfinished=0 resumed=0 sleeping=0"),
        f"==== chaos: starting w0.23 at {T0 + 1000:.3f}",
        log_line(T0 + 1001, 2161, "Partition activated partition=0 unfinished=0 resumed=0 sleeping=0"),
    ]) + "\n"
    pids = {"w0.1": 2161, "w0.2": 4022, "w0.23": 2161}
    acts = logs.activations_from_log(log, "w0", pids)
    assert [(a.incarnation, a.partition, round(a.time - T0)) for a in acts] == [
        ("w0.1", 0, 0), ("w0.2", 1, 101), ("w0.23", 0, 1001)]
    # The checks then see w0.1's calls (from T0 + 10 on) under w0.1's own activation: none is stale.
    world = World()
    world.activations = [a for a in acts if a.partition == 0] + [checks.Activation(T0, "w0.1", 1)]
    report = world.check()
    assert (report.stale_calls, report.overlaps) == (0, 0), report.violations


def test_activations_from_log__a_line_of_a_pid_not_the_incarnations_is_not_attributed_to_it():
    log = f"==== chaos: starting w1.3 at {T0:.3f}\n" + log_line(T0 + 1, 999, "Partition activated partition=2 x") + "\n"
    assert [a.incarnation for a in logs.activations_from_log(log, "w1", {"w1.3": 1234})] == ["w1.pid999?"]


def test_activations_from_log__a_marker_after_a_line_a_killed_incarnation_left_unfinished_still_counts(tmp_path):
    # w0.1 was killed in the middle of a print: its last line has no newline, and the driver's marker
    # for w0.2 was appended to it (seen in a chaos run: 48 of w0.2's own calls reported as stale).
    log = (f"==== chaos: starting w0.1 at {T0:.3f}\n" + log_line(T0 + 1, 11, "Partition activated partition=0 x")
           + "\nContent moderation for post 7548 is done" + f"==== chaos: starting w0.2 at {T0 + 9:.3f}\n"
           + log_line(T0 + 10, 22, "Partition activated partition=0 x") + "\n")
    acts = logs.activations_from_log(log, "w0", {"w0.1": 11, "w0.2": 22})
    assert [a.incarnation for a in acts] == ["w0.1", "w0.2"]
    # The driver now starts its marker on a line of its own.
    torn = tmp_path / "w0.log"
    torn.write_bytes(b"Content moderation for post 7548 is done")
    assert not cluster.ends_a_line(torn)
    torn.write_bytes(b"done\n")
    assert cluster.ends_a_line(torn)
    torn.write_bytes(b"")
    assert cluster.ends_a_line(torn)


# -- crashes, faults that took effect, re-run steps ----------------------------------
def test_checks__a_worker_that_exits_on_its_own_fails_the_run():
    world = World()
    world.events.append(Disturbance(T0 + 5, "crash", "w0.4", detail="exited with 1: Unable to bootstrap"))
    report = world.check()
    assert report.crashes == 1 and kinds(report) == {"crash": 1}
    assert "Unable to bootstrap" in report.violations[0].detail


def test_checks__faults_that_took_effect_are_counted_beside_the_faults_run():
    world = World()
    world.events += [Disturbance(T0 + 1, "kill_worker", "w0.1"), Disturbance(T0 + 2, "kill_worker", "w0.2", False),
                     Disturbance(T0 + 3, "restart_worker", "w0"), Disturbance(T0 + 4, "kill_broker", None)]
    report = world.check()
    assert report.ok, report.violations
    assert (report.faults, report.faults_effective) == (3, 2)
    assert "faults=3 " in report.summary() and "faults_effective=2 " in report.summary()


def journaled_world(second_epoch_at: int) -> World:
    """Event 4's create-post (step 0) journaled by epoch A at offset 10; epoch B activated at ``second_epoch_at``
    ran the invocation again and journaled step 0 itself (offset 20)."""
    world = World()
    world.epochs = [EpochStart(0, 1, "A"), EpochStart(0, second_epoch_at, "B")]
    world.entries = [Entry(0, 10, inv(4), 0, "A"), Entry(0, 20, inv(4), 0, "B")]
    return world


def test_checks__a_step_run_again_by_an_epoch_activated_after_its_entry_is_a_journaled_rerun():
    report = journaled_world(second_epoch_at=15).check()
    assert report.journaled_reruns == 1 and kinds(report) == {"journaled_rerun": 1}
    assert "step 0 was journaled under epoch A" in report.violations[0].detail


@pytest.mark.parametrize("second_epoch_at", [5, 8])
def test_checks__a_step_whose_entry_was_not_applied_may_run_again(second_epoch_at):
    # B activated before A's entry reached the log: the engine ignores A's entry (stale epoch), B must re-run.
    world = journaled_world(second_epoch_at)
    report = world.check()
    assert report.journaled_reruns == 0 and report.ok, report.violations


def rerun_world(fault_at: float | None) -> World:
    """w1.1 takes partition 0 over and calls event 4's create-post key again (the entry was not durable)."""
    world = World()
    t = T0 + 10 + 4
    world.calls = [c for c in world.calls if c.post_id != "p4" or c.key == f"{inv(4)}:0"]
    world.activations.append(checks.Activation(t + 30, "w1.1", 0))
    world.calls += [
        Call("w1.1", "POST", "/posts", f"{inv(4)}:0", "p4", t + 31, t + 31.01, 200),
        Call("w1.1", "GET", "/posts/p4/status", None, "p4", t + 31.1, t + 31.11, 200),
        Call("w1.1", "POST", "/feeds/u0", f"{inv(4)}:2", "p4", t + 31.2, t + 31.21, 200),
    ]
    if fault_at is not None:
        world.events.append(Disturbance(t + fault_at, "kill_worker", "w0.1"))
    return world


@pytest.mark.parametrize("fault_at", [0.005, -10.0, 25.0])
def test_checks__a_step_run_again_after_a_fault_before_its_entry_was_durable_is_allowed(fault_at):
    report = rerun_world(fault_at).check()
    assert report.ok, report.violations
    assert report.reruns == 1


@pytest.mark.parametrize("fault_at", [None, -30.0, 40.0])
def test_checks__a_step_run_again_with_no_fault_or_crash_near_it_is_a_violation(fault_at):
    report = rerun_world(fault_at).check()
    assert report.reruns == 1 and kinds(report) == {"rerun": 1}
    assert "w1.1 called it again" in report.violations[0].detail
