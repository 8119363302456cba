"""HTTP ingress under hostile input: a property-based run against /openapi.json, big bodies, slow and many clients.

One worker runs the seed services (UserFeed, PackageTracker) for the whole
module. Schemathesis generates requests from the worker's own OpenAPI
document (valid and invalid ones, a fixed seed, ~30 per operation) and every
response must be documented, JSON where the document says so, and never a
5xx: the only 5xx the document allows on these services is the 500 of a call
whose invocation failed terminally, and no seed handler does that (an
unknown package is a 404). Afterwards the worker still runs with the same
pid, is ready, and has logged no traceback.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from streamapp.config import Settings
from streamapp.runtime import openapi
from streamapp.services import registry
from tests import harness
from tests.support import fuzzrun

MAX_BODY = 1_048_576  # the default STREAMAPP_MAX_BODY_BYTES
FIRST_PID: dict[str, int] = {}  # app id -> the pid its worker must keep


@pytest.fixture(scope="module")
def seed_worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Worker]:
    base: Path = tmp_path_factory.mktemp("http-fuzz")
    posts, updates, dead = harness.unique("fuzz-posts"), harness.unique("fuzz-locations"), harness.unique("fuzz-dlq")
    harness.create_topics([posts, updates, dead])
    factory = harness.WorkerFactory(base, harness.unique("fuzz"), {
        "STREAMAPP_SUBSCRIPTIONS": f"{posts}=UserFeed/ProcessPost,{updates}=PackageTracker/UpdateLocation",
        "STREAMAPP_SERVICES": "",  # the seed services only
        "STREAMAPP_DEAD_LETTER_TOPIC": dead,
        "STREAMAPP_PARTITIONS": "4",
        "STREAMAPP_MODERATION_POLL_INTERVAL": "0.05",
    })
    worker = factory.new()
    assert worker.proc is not None
    FIRST_PID[worker.app_id] = worker.proc.pid
    yield worker
    factory.stop_all()


def assert_healthy(worker: harness.Worker) -> None:
    """Same process as at the start, ready, and no traceback or crashed agent in its log."""
    assert worker.proc is not None and worker.proc.poll() is None, f"worker exited:\n{worker.tail()}"
    assert worker.proc.pid == FIRST_PID[worker.app_id], "the worker was restarted"
    assert worker.get("/health")["ready"] is True
    log = worker.log()
    for marker in ("Traceback", "Crashed", "crashed", "Restarting dead", "Error handling request"):
        assert marker not in log, f"{marker!r} in the worker log:\n{worker.tail(80)}"


# -- property-based run against the OpenAPI document -------------------------------
FUZZ_CONFIG = {
    "seed": 6,
    "generation": {"max-examples": 30, "mode": "all", "database": "none"},
    "phases": {"stateful": {"enabled": False}},
    "request-timeout": 30,
}


def seed_document() -> dict[str, Any]:
    return openapi.document(registry(Settings(extra_services=())))


# Built in-process so pytest can collect one test per operation; the test below checks
# that the worker serves the same document.
schema = schemathesis.openapi.from_dict(seed_document(), config=schemathesis.Config.from_dict(FUZZ_CONFIG))


def test_openapi_json__served_document_is_the_registry_document(seed_worker: harness.Worker) -> None:
    assert seed_worker.get("/openapi.json") == json.loads(json.dumps(seed_document()))


def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """No 5xx, except a documented 500 that names an invocation whose recorded status is failed."""
    if response.status_code < 500:
        return None
    body: Any = None
    try:
        body = json.loads(response.content or b"null")
    except ValueError:
        pass
    inv = body.get("invocationId") if isinstance(body, dict) else None
    if response.status_code == 500 and inv:
        status, info = harness.run_async(_get_json(urljoin(response.request.url, f"/invocations/{inv}")))
        if status == 200 and info.get("status") == "failed":
            return None
    raise AssertionError(f"server error {response.status_code}: {response.content[:300]!r}")


async def _get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


# Invalid requests are refused with a 4xx; every answer is documented, with its content type, headers and schema.
CHECKS = [no_server_error, negative_data_rejection, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


@pytest.mark.timeout(60)
@schema.parametrize()
def test_fuzz__every_operation_answers_documented_json_and_never_5xx(case: Any, seed_worker: harness.Worker,
                                                                     pytestconfig: pytest.Config) -> None:
    started = time.monotonic()
    response = case.call_and_validate(base_url=seed_worker.url, checks=CHECKS)
    fuzzrun.record(pytestconfig, response.status_code)  # judged over every process at the run's end
    assert time.monotonic() - started < 30, "a request took longer than 30 s"


def test_fuzz__worker_is_still_healthy_afterwards(seed_worker: harness.Worker, pytestconfig: pytest.Config) -> None:
    # Whether the run really went through (valid and invalid requests of every kind answered) is judged
    # at the session's end over every test process's answers (tests/support/fuzzrun.py): the fuzz cases
    # may be shared out over the processes, and the other one may not have reached its share yet.
    fuzzrun.mark_checked(pytestconfig)
    assert_healthy(seed_worker)
    assert seed_worker.request("POST", "/PackageTracker/after-fuzz/RegisterPackage", {"finalDestination": "x"}) \
        == (200, None)


# -- oversized bodies ----------------------------------------------------------------
async def raw_request(port: int, head: bytes, body: bytes = b"") -> tuple[int, Any]:
    """Send a hand-made request; return the status and the JSON body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        async with asyncio.timeout(10):
            status_line = await reader.readline()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            data = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), json.loads(data) if data else None
    finally:
        writer.close()


def test_oversized_bodies__get_413_json_whatever_the_framing(seed_worker: harness.Worker) -> None:
    port = seed_worker.web_port
    path = b"/PackageTracker/big/RegisterPackage"
    too_big = json.dumps({"finalDestination": "x" * (2 * MAX_BODY)}).encode()

    async def go() -> list[tuple[str, int, Any]]:
        out = []
        # Declared too large: answered from the headers alone, no body sent.
        head = b"POST " + path + b" HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" \
               b"Content-Length: 1000000000000\r\n\r\n"
        out.append(("declared 1 TB", *await raw_request(port, head)))
        # Chunked, no length: the limit applies while reading.
        async def chunks() -> Any:
            for i in range(0, len(too_big), 65536):
                yield too_big[i:i + 65536]

        async with aiohttp.ClientSession() as session:
            for name, data in (("chunked 2 MB", chunks()), ("2 MB with content-length", io.BytesIO(too_big))):
                try:
                    async with session.post(seed_worker.url + path.decode(), data=data,
                                            headers={"content-type": "application/json"}) as resp:
                        out.append((name, resp.status, await resp.json(content_type=None)))
                except aiohttp.ClientError as exc:  # the server may close before the client sent it all
                    out.append((name, -1, repr(exc)))
            # Under the byte limit, but non-ASCII escapes (\\u00e9) make the invocation ~6x larger than
            # the body: too large for the internal topic.
            escaped = json.dumps({"content": "\u00e9" * 400_000, "metadata": "m"}, ensure_ascii=False).encode()
            assert len(escaped) < MAX_BODY
            for suffix in ("", "/send"):
                async with session.post(f"{seed_worker.url}/UserFeed/u/ProcessPost{suffix}", data=escaped,
                                        headers={"content-type": "application/json"}) as resp:
                    out.append((f"escaped {suffix or 'call'}", resp.status, await resp.json(content_type=None)))
            async with session.post(f"{seed_worker.url}/PackageTracker/big/getPackageInfo",
                                    data=io.BytesIO(too_big)) as resp:
                out.append(("shared read with a 2 MB body", resp.status, await resp.json(content_type=None)))
        return out

    results = harness.run_async(go())
    for name, status, body in results:
        assert status == 413 and isinstance(body, dict) and "error" in body, (name, status, body)
    assert_healthy(seed_worker)


def test_large_bodies_under_the_limit__are_read_whole_whatever_the_framing(seed_worker: harness.Worker) -> None:
    """aiohttp's read(n) returns what has arrived so far: the whole body must still be read."""
    destination = "d" * 600_000
    body = json.dumps({"finalDestination": destination}).encode()

    async def chunks() -> Any:
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]
            await asyncio.sleep(0)

    async def go() -> list[tuple[int, Any]]:
        out = []
        async with aiohttp.ClientSession() as session:
            for key, data in (("whole-length", io.BytesIO(body)), ("whole-chunked", chunks())):
                async with session.post(f"{seed_worker.url}/PackageTracker/{key}/RegisterPackage", data=data,
                                        headers={"content-type": "application/json"}) as resp:
                    out.append((resp.status, await resp.json(content_type=None)))
                async with session.get(f"{seed_worker.url}/PackageTracker/{key}/getPackageInfo") as resp:
                    info = await resp.json()
                    out.append((resp.status, len(info["finalDestination"]) if info else None))
        return out

    assert harness.run_async(go()) == [(200, None), (200, len(destination))] * 2
    assert_healthy(seed_worker)


def test_send_delay__out_of_range_is_a_400_not_an_infinite_timer(seed_worker: harness.Worker) -> None:
    status, body = seed_worker.request("POST", "/PackageTracker/d/RegisterPackage/send?delay=" + "9" * 400 + "s",
                                       {"finalDestination": "x"})
    assert status == 400 and "out of range" in body["error"], (status, body)


def test_idempotency_key__undecodable_bytes_are_a_400_not_a_stuck_call(seed_worker: harness.Worker) -> None:
    """aiohttp keeps header bytes that are not UTF-8 as surrogates, which the tables cannot store."""
    body = b'{"finalDestination": "x"}'

    async def go() -> list[tuple[int, Any]]:
        out = []
        for suffix in (b"", b"/send"):
            head = (b"POST /PackageTracker/idem/RegisterPackage" + suffix + b" HTTP/1.1\r\nHost: t\r\n"
                    b"Content-Type: application/json\r\nidempotency-key: \xff\xfe\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n")
            out.append(await raw_request(seed_worker.web_port, head, body))
        return out

    for status, answer in harness.run_async(go()):
        assert status == 400 and "idempotency-key" in answer["error"], (status, answer)
    assert seed_worker.request("POST", "/PackageTracker/idem/RegisterPackage", {"finalDestination": "y"},
                               headers={"idempotency-key": "caf\u00e9"}) == (200, None)
    assert_healthy(seed_worker)


# -- slow clients ------------------------------------------------------------------------
def test_slow_clients__headers_sent_byte_by_byte_do_not_block_other_requests(seed_worker: harness.Worker) -> None:
    """Slow clients hold their last header bytes until every fast request was answered.

    A server that waits for one client's headers before serving others never answers
    the fast requests (they time out); no bound here depends on the machine's speed.
    """
    port = seed_worker.web_port
    request = b"GET /PackageTracker/slow/getPackageInfo HTTP/1.1\r\nHost: slow\r\nX-Filler: " + b"z" * 20 + b"\r\n\r\n"
    slow_clients = 20
    byte_delay = 0.06
    held_back = 2  # the final CRLF: without it the headers are not complete

    async def go() -> tuple[bool, list[tuple[int, Any]]]:
        fast_done = asyncio.Event()
        sending = [asyncio.Event() for _ in range(slow_clients)]

        async def slow(i: int) -> tuple[int, Any]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                for k in range(len(request) - held_back):
                    writer.write(request[k:k + 1])
                    await writer.drain()
                    sending[i].set()
                    await asyncio.sleep(byte_delay)
                await fast_done.wait()
                writer.write(request[-held_back:])
                await writer.drain()
                status_line = await asyncio.wait_for(reader.readline(), 60)
                return int(status_line.split()[1]), None
            finally:
                writer.close()

        tasks = [asyncio.create_task(slow(i)) for i in range(slow_clients)]
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in sending)), 60)  # all mid-headers
        except TimeoutError:
            pytest.fail(f"{sum(not e.is_set() for e in sending)} slow clients could not send a byte in 60 s")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            for i in range(20):
                try:
                    async with session.post(f"{seed_worker.url}/PackageTracker/fast{i}/RegisterPackage",
                                            json={"finalDestination": "x"}) as resp:
                        assert resp.status == 200, await resp.text()
                    async with session.get(f"{seed_worker.url}/health") as resp:
                        assert resp.status == 200
                except TimeoutError:
                    pytest.fail(f"fast request {i} got no answer in 60 s while slow clients were mid-headers")
        still_sending = not any(t.done() for t in tasks)
        fast_done.set()
        return still_sending, await asyncio.gather(*tasks)

    still_sending, slow_results = harness.run_async(go())
    assert still_sending, "a slow client finished before it sent its whole headers"
    assert [status for status, _ in slow_results] == [200] * slow_clients, slow_results
    assert_healthy(seed_worker)


# -- many connections ----------------------------------------------------------------------
def test_500_concurrent_connections__all_answered_and_worker_stays_healthy(seed_worker: harness.Worker) -> None:
    n = 500

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[int, int]:
        url = seed_worker.url
        kind = i % 4
        if kind == 0:
            method, path, body = "GET", "/health", None
        elif kind == 1:
            method, path, body = "GET", f"/PackageTracker/many{i}/getPackageInfo", None
        elif kind == 2:
            method, path, body = "POST", f"/PackageTracker/many{i}/RegisterPackage/send", {"finalDestination": "x"}
        else:
            method, path, body = "POST", f"/PackageTracker/many{i}/UpdateLocation", {"timestamp": "t", "location": "l"}
        async with session.request(method, url + path, json=body) as resp:
            await resp.read()
            return i, resp.status

    async def go() -> list[tuple[int, int]]:
        # One connection per request, all opened at once.
        connector = aiohttp.TCPConnector(limit=n, force_close=True)
        # Each request may take up to two minutes: only a server that stops answering runs out.
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
            return await asyncio.gather(*(one(session, i) for i in range(n)))

    try:
        results = harness.run_async(go())
    except TimeoutError:
        pytest.fail("a request got no answer in 120 s")
    expected = {0: 200, 1: 200, 2: 202, 3: 404}  # an update for an unregistered package: "package not found"
    wrong = [(i, status) for i, status in results if status != expected[i % 4]]
    assert not wrong, wrong[:20]
    assert_healthy(seed_worker)
