"""The seed's services through the in-memory runner, straight and always-replay."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

import pytest
from replay_harness import MODES, START, run_invocation

from streamapp.durable import SharedContext, mute
from streamapp.durable.executor import Failed
from streamapp.services import packagetracker, userfeed
from streamapp.services.userfeed import DONE, PENDING, SocialMediaPost

pytestmark = pytest.mark.parametrize("mode", MODES)


@contextlib.contextmanager
def muted_stdout() -> Iterator[io.StringIO]:
    out = io.StringIO()
    with contextlib.redirect_stdout(mute._MutableStream(out)):  # type: ignore[type-var]
        yield out


class FakeSocialMedia:
    """Records every call; not idempotent, so a repeated create shows up as a second post."""

    def __init__(self, statuses: list[str], *, status_failures: int = 0) -> None:
        self.statuses = list(statuses)
        self.status_failures = status_failures
        self.created: list[tuple[str, SocialMediaPost, str]] = []
        self.status_checks: list[str] = []
        self.feed_updates: list[tuple[str, str, str]] = []

    async def create_post(self, user_id: str, post: SocialMediaPost, idempotency_key: str) -> str:
        self.created.append((user_id, post, idempotency_key))
        return f"post-{len(self.created)}"

    async def get_post_status(self, post_id: str) -> str:
        self.status_checks.append(post_id)
        if self.status_failures > 0:
            self.status_failures -= 1
            raise ConnectionError("moderation service unavailable")
        return self.statuses.pop(0)

    async def update_user_feed(self, user_id: str, post_id: str, idempotency_key: str) -> None:
        self.feed_updates.append((user_id, post_id, idempotency_key))


POST = {"content": "hello world", "metadata": "m"}


# -- UserFeed/ProcessPost -----------------------------------------------------


async def test_process_post__creates_one_post_polls_until_done_and_updates_feed_once(mode: str) -> None:
    client = FakeSocialMedia([PENDING, PENDING, DONE])
    feed = userfeed.build(userfeed.Config(), client=client)

    run = await run_invocation(feed.handlers["ProcessPost"], mode, key="alice", payload=POST, invocation_id="inv_p")

    assert run.result is None
    assert client.created == [("alice", SocialMediaPost("hello world", "m"), "inv_p:0")]
    assert client.status_checks == ["post-1"] * 3
    assert client.feed_updates == [("alice", "post-1", "inv_p:6")]  # key of step 6: after 3 checks, 2 sleeps


async def test_process_post__sleeps_the_configured_poll_interval_between_checks(mode: str) -> None:
    client = FakeSocialMedia([PENDING, PENDING, PENDING, DONE])
    feed = userfeed.build(userfeed.Config(poll_interval=2.5), client=client)

    run = await run_invocation(feed.handlers["ProcessPost"], mode, key="alice", payload=POST)

    assert [wake - now for now, wake in run.park_times()] == [2.5, 2.5, 2.5]
    assert [e["t"] for e in run.journal].count("sleep") == 3
    assert run.clock.now() == START + 7.5


async def test_process_post__default_settings_poll_every_five_seconds(mode: str) -> None:
    client = FakeSocialMedia([PENDING, DONE])
    feed = userfeed.build(userfeed.Config(), client=client)

    run = await run_invocation(feed.handlers["ProcessPost"], mode, key="alice", payload=POST)

    assert [wake - now for now, wake in run.park_times()] == [5.0]


async def test_process_post__prints_each_line_once_despite_replays(mode: str) -> None:
    client = FakeSocialMedia([PENDING, PENDING, DONE])
    feed = userfeed.build(userfeed.Config(poll_interval=5), client=client)

    with muted_stdout() as out:
        await run_invocation(feed.handlers["ProcessPost"], mode, key="alice", payload=POST)

    pending = "Content moderation for post post-1 is still pending... Will check again in 5 seconds"
    assert out.getvalue().splitlines() == [pending, pending, "Content moderation for post post-1 is done"]


async def test_process_post__transient_status_failure_is_retried_without_a_second_post(mode: str) -> None:
    client = FakeSocialMedia([DONE], status_failures=2)
    feed = userfeed.build(userfeed.Config(), client=client)

    run = await run_invocation(feed.handlers["ProcessPost"], mode, key="alice", payload=POST)

    assert run.result is None
    assert len(run.retry_delays()) == 2
    assert len(client.created) == 1
    assert len(client.feed_updates) == 1


async def test_process_post__invalid_post_fails_terminally_before_any_call(mode: str) -> None:
    client = FakeSocialMedia([DONE])
    feed = userfeed.build(userfeed.Config(), client=client)

    run = await run_invocation(feed.handlers["ProcessPost"], mode, key="alice", payload={"content": "hi"})

    assert run.outcome == Failed("InvalidInputError: input: missing field 'metadata'")
    assert client.created == []


# -- PackageTracker -----------------------------------------------------------


async def _call(mode: str, handler: str, key: str, payload: Any, state: dict[str, Any]) -> Any:
    return await run_invocation(packagetracker.tracker.handlers[handler], mode, key=key, payload=payload, state=state)


async def test_package_tracker__register_then_updates_append_locations_in_order(mode: str) -> None:
    state: dict[str, Any] = {}
    for handler, payload in [
        ("RegisterPackage", {"finalDestination": "Bremen"}),
        ("UpdateLocation", {"timestamp": "2024-01-01T10:00:00Z", "location": "Hamburg"}),
        ("UpdateLocation", {"timestamp": "2024-01-02T10:00:00Z", "location": "Bremen"}),
    ]:
        run = await _call(mode, handler, "pkg-1", payload, state)
        assert run.result is None
        state = run.state

    assert state == {
        packagetracker.PACKAGE_INFO: {
            "finalDestination": "Bremen",
            "locations": [
                {"timestamp": "2024-01-01T10:00:00Z", "location": "Hamburg"},
                {"timestamp": "2024-01-02T10:00:00Z", "location": "Bremen"},
            ],
        }
    }


async def test_package_tracker__register_again_resets_locations(mode: str) -> None:
    old = {"finalDestination": "Bremen", "locations": [{"timestamp": "t", "location": "x"}]}
    state = {packagetracker.PACKAGE_INFO: old}

    run = await _call(mode, "RegisterPackage", "pkg-1", {"finalDestination": "Kiel"}, state)

    assert run.state == {packagetracker.PACKAGE_INFO: {"finalDestination": "Kiel", "locations": []}}


async def test_package_tracker__update_of_unknown_package_fails_terminally(mode: str) -> None:
    run = await _call(mode, "UpdateLocation", "pkg-unknown", {"timestamp": "t", "location": "x"}, {})

    assert run.outcome == Failed("TerminalError: package not found", exhausted=False, status_code=404)
    assert len(run.history) == 1  # not retried
    assert run.state == {}


async def test_package_tracker__get_package_info_reads_committed_state(mode: str) -> None:
    run = await _call(mode, "RegisterPackage", "pkg-1", {"finalDestination": "Bremen"}, {})
    run = await _call(mode, "UpdateLocation", "pkg-1", {"timestamp": "t1", "location": "Hamburg"}, run.state)
    get_info = packagetracker.tracker.handlers["getPackageInfo"]
    assert get_info.kind == "shared" and get_info.input_type is None

    info = await get_info.fn(SharedContext("PackageTracker", "pkg-1", run.state))
    info["locations"].clear()  # a reader's copy: the committed state stays as it was
    again = await get_info.fn(SharedContext("PackageTracker", "pkg-1", run.state))
    missing = await get_info.fn(SharedContext("PackageTracker", "pkg-2", {}))

    assert again == {"finalDestination": "Bremen", "locations": [{"timestamp": "t1", "location": "Hamburg"}]}
    assert missing is None
