"""The seed's two walkthroughs, step by step, with Apache Kafka's console producer."""

from __future__ import annotations

import re
import subprocess
import sys

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
