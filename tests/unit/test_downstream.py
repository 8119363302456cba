"""The downstream social-media backend, served in-process, driven through HttpClient."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from streamapp.durable import RetryableError, TerminalError
from streamapp.services.socialmedia import HttpClient
from streamapp.services.userfeed import DONE, PENDING, SocialMediaPost
from streamapp.testing.downstream import Backend, main, make_app

ROOT = Path(__file__).resolve().parents[2]
POST = SocialMediaPost(content="hello world", metadata="m")


@contextlib.asynccontextmanager
async def _serve(backend: Backend | None = None, app: web.Application | None = None) -> AsyncIterator[HttpClient]:
    """Serve the backend (or any app) on a port from the OS; yield a client for it."""
    server = TestServer(app or make_app(backend or Backend()), host="127.0.0.1")
    await server.start_server()
    client = HttpClient(str(server.make_url("/")))
    try:
        yield client
    finally:
        await client.close()
        await server.close()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    async with _serve(Backend(pending_polls=0)) as c:
        yield c


async def _get(client: HttpClient, path: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(client.base_url + path) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_create_post__same_key_returns_same_id_and_records_once(client: HttpClient) -> None:
    first = await client.create_post("alice", POST, "inv-1:0")
    again = await client.create_post("alice", POST, "inv-1:0")
    other = await client.create_post("alice", POST, "inv-2:0")

    assert again == first and other != first
    records = await _get(client, "/records")
    assert [(p["postId"], p["userId"], p["content"], p["idempotencyKey"]) for p in records["posts"]] == [
        (first, "alice", "hello world", "inv-1:0"),
        (other, "alice", "hello world", "inv-2:0"),
    ]
    assert records["posts"][0]["createdAt"] < records["posts"][1]["createdAt"]
    assert records["duplicatePostAttempts"] == 1


async def test_update_user_feed__same_key_recorded_once_and_duplicates_counted(client: HttpClient) -> None:
    post_id = await client.create_post("bob", POST, "inv-1:0")
    for _ in range(3):
        await client.update_user_feed("bob", post_id, "inv-1:2")

    records = await _get(client, "/records")
    [update] = records["feedUpdates"]
    assert (update["userId"], update["postId"], update["idempotencyKey"]) == ("bob", post_id, "inv-1:2")
    assert update["seq"] > records["posts"][0]["createdAt"]
    assert records["duplicateFeedAttempts"] == 2
    assert records["duplicatePostAttempts"] == 0


async def test_path_segments__odd_user_ids_round_trip(client: HttpClient) -> None:
    post_id = await client.create_post("a b/c?d", POST, "k")
    await client.update_user_feed("a b/c?d", post_id, "k")
    assert (await _get(client, "/records"))["feedUpdates"][0]["userId"] == "a b/c?d"


async def test_status__pending_for_first_n_polls_per_post_then_done() -> None:
    async with _serve(Backend(pending_polls=2)) as client:
        first = await client.create_post("u", POST, "k1")
        second = await client.create_post("u", POST, "k2")
        polls = [await client.get_post_status(first) for _ in range(4)]
        assert polls == [PENDING, PENDING, DONE, DONE]
        assert await client.get_post_status(second) == PENDING


@pytest.mark.parametrize(("ratio", "expected"), [(1.0, PENDING), (0.0, DONE)])
async def test_status__pending_ratio_decides_each_poll(ratio: float, expected: str) -> None:
    async with _serve(Backend(pending_ratio=ratio)) as client:
        post_id = await client.create_post("u", POST, "k")
        assert {await client.get_post_status(post_id) for _ in range(20)} == {expected}


async def test_status__default_ratio_is_mostly_pending() -> None:
    async with _serve(Backend(rng=random.Random(7))) as client:
        post_id = await client.create_post("u", POST, "k")
        statuses = [await client.get_post_status(post_id) for _ in range(200)]
        assert 130 < statuses.count(PENDING) < 190


async def test_reset__forgets_records_and_keys(client: HttpClient) -> None:
    first = await client.create_post("u", POST, "k")
    await client.create_post("u", POST, "k")
    async with aiohttp.ClientSession() as s, s.post(client.base_url + "/reset") as resp:
        assert resp.status == 200

    assert await _get(client, "/records") == {
        "posts": [],
        "feedUpdates": [],
        "duplicatePostAttempts": 0,
        "duplicateFeedAttempts": 0,
    }
    assert await client.create_post("u", POST, "k") != first


@pytest.mark.parametrize(
    ("path", "body", "headers", "error"),
    [
        ("/posts", b"{not json", {"idempotency-key": "k"}, "not valid JSON"),
        ("/posts", b"[1, 2]", {"idempotency-key": "k"}, "JSON object"),
        ("/posts", b'{"userId": "u"}', {"idempotency-key": "k"}, "content"),
        ("/posts", b'{"userId": "u", "content": 5}', {"idempotency-key": "k"}, "content"),
        ("/posts", b'{"userId": "u", "content": "c", "metadata": 1}', {"idempotency-key": "k"}, "metadata"),
        ("/posts", b'{"userId": "u", "content": "c"}', {}, "idempotency-key"),
        ("/feeds/u", b"{}", {"idempotency-key": "k"}, "postId"),
        ("/feeds/u", b'{"postId": "p"}', {}, "idempotency-key"),
    ],
)
async def test_bad_input__400_with_json_error(
    client: HttpClient, path: str, body: bytes, headers: dict[str, str], error: str
) -> None:
    async with aiohttp.ClientSession() as s, s.post(client.base_url + path, data=body, headers=headers) as resp:
        assert resp.status == 400
        assert error in (await resp.json())["error"]
    assert await _get(client, "/records") == {
        "posts": [],
        "feedUpdates": [],
        "duplicatePostAttempts": 0,
        "duplicateFeedAttempts": 0,
    }


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/posts/nope/status", 404),
        ("POST", "/feeds/u", 404),  # feed update naming an unknown post
        ("GET", "/no/such/route", 404),
        ("GET", "/posts", 405),
    ],
)
async def test_unknown__json_error_body(client: HttpClient, method: str, path: str, status: int) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, client.base_url + path, json={"postId": "nope"}, headers={"idempotency-key": "k"}) as resp,
    ):
        assert resp.status == status
        assert resp.content_type == "application/json"
        assert (await resp.json())["error"]


async def test_client__4xx_raises_terminal_error(client: HttpClient) -> None:
    with pytest.raises(TerminalError, match=r"404.*unknown post nope"):
        await client.get_post_status("nope")
    with pytest.raises(TerminalError, match="404"):
        await client.update_user_feed("u", "nope", "k")
    with pytest.raises(TerminalError, match="400"):
        await client.create_post("", POST, "k")


@pytest.mark.parametrize(("status", "retry_after", "delay"), [(500, None, None), (503, "3", 3.0), (429, "1", 1.0)])
async def test_client__5xx_and_429_raise_retryable_not_terminal(
    status: int, retry_after: str | None, delay: float | None
) -> None:
    async def fail(request: web.Request) -> web.Response:
        headers = {"Retry-After": retry_after} if retry_after else {}
        return web.json_response({"error": "backend on fire"}, status=status, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fail)
    async with _serve(app=app) as client:
        with pytest.raises(RetryableError, match="backend on fire") as raised:
            await client.create_post("u", POST, "k")
    assert not isinstance(raised.value, TerminalError)
    assert raised.value.retry_after == delay


async def test_client__connection_refused_raises_retryable() -> None:
    with socket.socket() as s:  # a port from the OS that nothing listens on afterwards
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = HttpClient(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(RetryableError, match="failed"):
            await client.get_post_status("p")
    finally:
        await client.close()


async def test_client__session_is_shared_and_reopened_after_close(client: HttpClient) -> None:
    await client.create_post("u", POST, "k1")
    await client.create_post("u", POST, "k2")
    await client.close()
    assert await client.create_post("u", POST, "k1")


async def test_prints__seed_lines_once_per_record(client: HttpClient, capsys: pytest.CaptureFixture[str]) -> None:
    post_id = await client.create_post("carol", POST, "k")
    await client.create_post("carol", POST, "k")
    await client.update_user_feed("carol", post_id, "k")
    await client.update_user_feed("carol", post_id, "k")

    assert capsys.readouterr().out.splitlines() == [
        f"Created post {post_id} for user carol with content: hello world",
        f"Updating the user feed for user carol with post {post_id}",
    ]


async def test_journal__restart_keeps_records_and_dedup(tmp_path: Path) -> None:
    journal = tmp_path / "downstream.jsonl"
    async with _serve(Backend(pending_polls=0, journal=journal)) as client:
        post_id = await client.create_post("dave", POST, "k")
        await client.update_user_feed("dave", post_id, "k")
        await client.update_user_feed("dave", post_id, "k")
        before = await _get(client, "/records")
    with journal.open("a") as f:
        f.write('{"t": "post", "postId"')  # a line torn by a kill

    async with _serve(Backend(pending_polls=0, journal=journal)) as client:
        assert await _get(client, "/records") == before
        assert await client.create_post("dave", POST, "k") == post_id
        assert await client.get_post_status(post_id) == DONE
        newer = await client.create_post("dave", POST, "k2")
        after = await _get(client, "/records")
    assert after["duplicatePostAttempts"] == 1
    assert after["posts"][-1]["postId"] == newer
    assert after["posts"][-1]["createdAt"] > before["feedUpdates"][0]["seq"]


async def test_main__serves_on_a_port_from_the_os(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streamapp.testing.downstream",
        "--port",
        "0",
        "--pending-polls",
        "1",
        "--journal",
        str(tmp_path / "j.jsonl"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
        assert line.startswith("Downstream backend listening on http://127.0.0.1:"), line
        client = HttpClient(line.split()[-1])
        try:
            post_id = await client.create_post("erin", POST, "k")
            assert [await client.get_post_status(post_id) for _ in range(2)] == [PENDING, DONE]
        finally:
            await client.close()
        printed = (await asyncio.wait_for(proc.stdout.readline(), timeout=10)).decode()
        assert printed == f"Created post {post_id} for user erin with content: hello world\n"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=10)
    assert (tmp_path / "j.jsonl").read_text().count(post_id) == 1


@pytest.mark.parametrize("argv", [["--pending-ratio", "1.5"], ["--pending-polls", "-1"], ["--port", "x"]])
def test_main__rejects_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "error" in capsys.readouterr().err
