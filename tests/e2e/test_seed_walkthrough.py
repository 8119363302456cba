"""The seed's two walkthroughs, step by step, with Apache Kafka's console producer."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from tests import harness

SEED_POSTS = [
    'userid1:{"content": "Hi! This is my first post!", "metadata": "public"}',
    'userid2:{"content": "Hi! This is my first post!", "metadata": "public"}',
    'userid1:{"content": "Hi! This is my second post!", "metadata": "public"}',
]


def test_event_transactions__seed_posts_run_in_parallel_per_user_and_in_order_within_a_user(
    seed_workers, seed_env, downstream
):
    worker = seed_workers.new(env={"STREAMAPP_DOWNSTREAM_URL": downstream.url})
    harness.console_produce(seed_env["posts"], SEED_POSTS)
    records = harness.wait_for(lambda: len(downstream.records()["feedUpdates"]) >= 3 and downstream.records(),
                               timeout=60, what="three feed updates", detail=worker.tail)
    posts = {p["postId"]: p for p in records["posts"]}
    assert sorted((p["userId"], p["content"]) for p in posts.values()) == [
        ("userid1", "Hi! This is my first post!"),
        ("userid1", "Hi! This is my second post!"),
        ("userid2", "Hi! This is my first post!"),
    ]
    feed = records["feedUpdates"]
    assert sorted(u["postId"] for u in feed) == sorted(posts), "one feed update per post"
    assert records["duplicatePostAttempts"] == 0 and records["duplicateFeedAttempts"] == 0

    def post_of(user: str, content: str) -> dict[str, object]:
        return next(p for p in posts.values() if p["userId"] == user and p["content"] == content)

    def update_of(post: dict[str, object]) -> dict[str, object]:
        return next(u for u in feed if u["postId"] == post["postId"])

    u1_first = post_of("userid1", "Hi! This is my first post!")
    u1_second = post_of("userid1", "Hi! This is my second post!")
    u2_first = post_of("userid2", "Hi! This is my first post!")
    # No head-of-line blocking: userid2's post is created while userid1's first still waits.
    assert u2_first["createdAt"] < update_of(u1_first)["seq"]
    # Per-key order: userid1's second post starts only after its first completed.
    assert update_of(u1_first)["seq"] < u1_second["createdAt"] < update_of(u1_second)["seq"]
    harness.wait_for(lambda: worker.log().count("Invocation completed successfully method=UserFeed/ProcessPost") == 3,
                     timeout=30, what="three completion log lines", detail=worker.tail)
    assert len(re.findall(r"Handling invocation method=UserFeed/ProcessPost invocationID=inv_", worker.log())) == 3


def test_event_transactions__in_process_stubs_print_the_seed_lines(seed_workers, seed_env):
    worker = seed_workers.new()
    harness.console_produce(seed_env["posts"], SEED_POSTS)
    harness.wait_for(lambda: worker.log().count("Invocation completed successfully method=UserFeed/ProcessPost") == 3,
                     timeout=90, what="three completed posts", detail=worker.tail)
    log = worker.log()
    created = re.findall(r"^Created post (\S+) for user (\w+) with content: (.*)$", log, re.M)
    assert sorted((u, c) for _, u, c in created) == [
        ("userid1", "Hi! This is my first post!"),
        ("userid1", "Hi! This is my second post!"),
        ("userid2", "Hi! This is my first post!"),
    ]
    for post_id, user, _ in created:
        assert log.count(f"Content moderation for post {post_id} is done") == 1
        assert log.count(f"Updating the user feed for user {user} with post {post_id}") == 1
        pending = f"Content moderation for post {post_id} is still pending... Will check again in 1 seconds"
        assert log.count(pending) == log.count(f"{post_id} is still pending")


def kill_when_frozen_log_shows(worker: harness.Worker, condition: Callable[[str], bool], *, timeout: float,
                              what: str) -> str:
    """SIGKILL ``worker`` at a moment its log satisfies ``condition``; return that log.

    The log is read while the worker is stopped (SIGSTOP), so nothing happens
    between the check and the kill; when the check fails it runs on (SIGCONT)
    and the check is made again a moment later.
    """
    assert worker.proc is not None
    pid = worker.proc.pid
    deadline = time.monotonic() + timeout
    while True:
        os.killpg(pid, signal.SIGSTOP)
        try:
            log = worker.log()
            if condition(log):
                worker.kill()
                return log
        finally:
            if worker.proc.poll() is None:
                os.killpg(pid, signal.SIGCONT)
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{worker.tail()}")
        time.sleep(0.2)


def test_event_transactions__kill_9_while_posts_wait_for_moderation__each_post_is_created_once(
    seed_workers, seed_env
):
    """The README's walkthrough 1 ends: kill -9 the worker while a post waits for moderation, start it again."""
    worker = seed_workers.new(env={"STREAMAPP_SESSION_TIMEOUT": "6"})
    posts = [(f"user{n}", "Hi! This is my first post!") for n in range(6)] + [
        ("user0", "Hi! This is my second post!"), ("user1", "Hi! This is my second post!")]
    harness.console_produce(seed_env["posts"], [
        f'{user}:{{"content": "{content}", "metadata": "public"}}' for user, content in posts])
    created_re = re.compile(r"^Created post (\S+) for user (\w+) with content: (.*)$", re.M)

    def done(log: str, post_id: str) -> bool:
        return f"Content moderation for post {post_id} is done" in log

    def pending_and_quiet(log: str) -> bool:
        # Each created post was polled (a poll follows the create-post step's journal
        # entry, so the recovery cannot create it again), each post found moderated has
        # its feed update (which follows that poll's journal entry: a kill between the
        # two would run the poll again), no feed update is between its step and the
        # invocation's completion, and a post still waits for moderation.
        created = [p for p, _, _ in created_re.findall(log)]
        updates = log.count("Updating the user feed for user")
        completed = log.count("Invocation completed successfully method=UserFeed/ProcessPost")
        return all(f"Content moderation for post {p} is " in log for p in created) and updates == completed \
            and all(f" with post {p}" in log for p in created if done(log, p)) \
            and any(not done(log, p) for p in created)

    first_life = kill_when_frozen_log_shows(worker, pending_and_quiet, timeout=90,
                                            what="a post waiting for moderation, every created post polled")
    pending_at_kill = {p for p, _, _ in created_re.findall(first_life) if not done(first_life, p)}
    worker.start()
    harness.wait_for(lambda: worker.log().count("Updating the user feed for user") == len(posts), timeout=120,
                     what="every post's feed update", detail=worker.tail)
    log = worker.log()
    created = created_re.findall(log)
    assert sorted((user, content) for _, user, content in created) == sorted(posts), "a post was created twice"
    second_life = log[len(first_life):]
    for post_id, user, _ in created:
        update = f"Updating the user feed for user {user} with post {post_id}"
        assert log.count(update) == 1 and log.count(f"Content moderation for post {post_id} is done") == 1
        if post_id in pending_at_kill:  # it resumed from its journal: same post id, no second create
            assert done(second_life, post_id) and update in second_life
    for user in ("user0", "user1"):  # per-key order held across the kill
        first, second = (next(p for p, u, c in created if u == user and c == text)
                         for text in ("Hi! This is my first post!", "Hi! This is my second post!"))
        assert log.index(f"Updating the user feed for user {user} with post {first}") \
            < log.index(f"Created post {second} for user {user}")
    harness.wait_for(lambda: worker.get("/invocations")["invocations"] == [], timeout=30,
                     what="no unfinished invocation", detail=worker.tail)


def test_event_enrichment__register_update_and_query_over_http_and_cli(seed_workers, seed_env):
    worker = seed_workers.new()
    status, body = worker.request("POST", "/PackageTracker/package123/RegisterPackage",
                                  {"finalDestination": "Bridge 6, Amsterdam"})
    assert (status, body) == (200, None)
    harness.console_produce(seed_env["updates"], [
        'package123:{"timestamp": "2024-10-10 13:00", "location": "Pinetree Road 5, Paris"}',
        'package123:{"timestamp": "2024-10-10 14:00", "location": "Mountain Road 155, Brussels"}',
        'unknown-package:{"timestamp": "2024-10-10 15:00", "location": "Nowhere"}',
    ])
    expected = {
        "finalDestination": "Bridge 6, Amsterdam",
        "locations": [
            {"timestamp": "2024-10-10 13:00", "location": "Pinetree Road 5, Paris"},
            {"timestamp": "2024-10-10 14:00", "location": "Mountain Road 155, Brussels"},
        ],
    }
    harness.wait_for(lambda: worker.request("GET", "/PackageTracker/package123/getPackageInfo") == (200, expected),
                     timeout=30, what="both locations", detail=worker.tail)
    cli = subprocess.run(
        [sys.executable, "-m", "streamapp", "kv", "get", "PackageTracker", "package123", "--url", worker.url],
        capture_output=True, text=True, timeout=60, cwd=harness.ROOT,
    )
    assert cli.returncode == 0, cli.stderr
    out = cli.stdout
    assert "package-info" in out and "PackageTracker" in out and "package123" in out
    assert out.index("Pinetree Road 5, Paris") < out.index("Mountain Road 155, Brussels")
    dlq = harness.wait_for(lambda: harness.read_topic(seed_env["dead_letters"]), timeout=30,
                           what="the unknown package's update to be dead-lettered", detail=worker.tail)
    assert [r.key for r in dlq] == [b"unknown-package"]
    assert b"package not found" in dlq[0].headers["streamapp.error"]
    status, body = worker.request("POST", "/PackageTracker/nowhere/UpdateLocation",
                                  {"timestamp": "2024-10-10 16:00", "location": "Nowhere"})
    assert status == 404 and body["error"] == "TerminalError: package not found"
