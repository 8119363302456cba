"""HTTP views at their edges, broker-free: call waiters never outlive their request, peer lookups are bounded.

The views run on a real aiohttp server over an engine driven by ``EngineRig``;
the runtime's producer is replaced by a function that fails the way the
broker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from faust.types import TP

from streamapp.config import Settings
from streamapp.durable import Registry
from streamapp.runtime import ingress
from streamapp.runtime import web as web_views
from streamapp.runtime.commands import object_key, partition_for
from streamapp.runtime.routes import FORWARDED
from tests.support.services import services as test_services
from tests.unit.engine_fakes import EngineRig

PARTITIONS = 4
Invoke = Callable[..., Awaitable[None]]


def registry() -> Registry:
    reg = Registry()
    for svc in test_services:
        reg.add(svc)
    return reg


def runtime(rig: EngineRig, invoke: Invoke, peers: list[str] | None = None,
            unapplied: dict[int, int] | Exception | None = None) -> Any:
    """What the views use of ``Runtime``; ``peers`` are the other workers' advertised URLs.

    ``unapplied``: per partition, records its log holds beyond those the rig applied (a send
    another worker just made durable), or the error the broker answers when asked where the logs end.
    """
    me = "http://127.0.0.1:1"
    metadata: dict[str, Any] = {me: {}, **{url: {} for url in peers or []}}
    changelog = "app-invocations-changelog"
    rig.tables.invocations.changelog_topic = SimpleNamespace(get_topic_name=lambda: changelog)  # type: ignore[attr-defined]
    owned = {me: {changelog: set(range(PARTITIONS))}}  # the group assigned every partition here
    ends_at = unapplied if isinstance(unapplied, dict) else {}

    async def highwaters(*tps: TP) -> dict[TP, int]:
        if isinstance(unapplied, Exception):
            raise unapplied
        return {tp: rig.offsets.get(tp.partition, -1) + 1 + ends_at.get(tp.partition, 0) for tp in tps}

    return SimpleNamespace(
        settings=Settings(partitions=PARTITIONS), registry=registry(), tables=rig.tables, engine=rig.engine,
        outbox=SimpleNamespace(invoke=invoke), internal=SimpleNamespace(get_topic_name=lambda: "app-internal"),
        delivery=SimpleNamespace(guards={"invocations": SimpleNamespace(next={})}),
        app=SimpleNamespace(conf=SimpleNamespace(canonical_url=me), consumer=SimpleNamespace(highwaters=highwaters),
                            assignor=SimpleNamespace(tables_metadata=lambda: metadata,
                                                     table_metadata=lambda topic: owned if topic == changelog else {})),
    )


@contextlib.asynccontextmanager
async def serve(rt: Any) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    web_views.install(app, rt)
    async with TestClient(TestServer(app)) as client:
        yield client


def key_on(partition: int) -> str:
    return next(k for k in (f"k{i}" for i in range(1000))
                if partition_for(object_key("Test", k), PARTITIONS) == partition)


def live_rig() -> EngineRig:
    rig = EngineRig()
    for p in range(PARTITIONS):
        rig.activate(p)
    return rig


def waiters(rig: EngineRig) -> int:
    return sum(len(futs) for futs in rig.engine.waiters.values())


async def test_call_waiters__none_left_after_413_broker_error_or_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    failures: list[BaseException] = [MessageSizeTooLargeError(), KafkaConnectionError()]

    async def invoke(target: dict[str, Any], source: Any = None) -> None:
        if failures:
            raise failures.pop(0)  # otherwise accepted, and never finishes

    rig = live_rig()
    monkeypatch.setattr(web_views, "CALL_TIMEOUT", 0.2)
    async with serve(runtime(rig, invoke)) as client:
        statuses = []
        for i in range(3):
            resp = await client.post(f"/Test/k{i}/Nap", json={"tag": "t"})
            statuses.append(resp.status)
    assert statuses == [413, 500, 504]  # refused, broker failure, still running at the timeout
    assert waiters(rig) == 0, rig.engine.waiters
    assert rig.engine.waiter_partition == {}


async def test_call__partition_assigned_but_not_driven__503_and_no_waiter() -> None:
    sent: list[dict[str, Any]] = []

    async def invoke(target: dict[str, Any], source: Any = None) -> None:
        sent.append(target)

    rig = EngineRig()  # no partition activated: such a waiter would never be released
    async with serve(runtime(rig, invoke)) as client:
        resp = await client.post("/Test/k/Nap", json={"tag": "t"})
        body = await resp.json()
    assert resp.status == 503 and "retry" in body["error"], body
    assert (waiters(rig), sent) == (0, [])


@contextlib.asynccontextmanager
async def silent_peer() -> AsyncIterator[str]:
    """A peer that accepts connections and never answers (frozen, or a black hole)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in held:
            writer.close()
        server.close()


@contextlib.asynccontextmanager
async def listening(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on a port from the OS: its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def knowing_peer(inv_id: str) -> AsyncIterator[str]:
    async def invocation(request: web.Request) -> web.Response:
        if request.match_info["id"] != inv_id:
            return web.json_response({"error": "unknown"}, status=404)
        return web.json_response({"id": inv_id, "status": "completed"})

    app = web.Application()
    app.router.add_get("/invocations/{id}", invocation)
    async with listening(app) as url:
        yield url


async def nothing(target: dict[str, Any], source: Any = None) -> None:
    raise AssertionError("no invocation is sent by a lookup")


async def test_unknown_invocation_lookup__silent_peers_asked_at_once_and_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_views, "PEER_TIMEOUT", 1.0)  # 20 peers asked one by one would take 20 s
    async with contextlib.AsyncExitStack() as stack:
        peers = [await stack.enter_async_context(silent_peer()) for _ in range(20)]
        async with serve(runtime(live_rig(), nothing, peers)) as client:
            started = time.monotonic()
            # Bound far beyond PEER_TIMEOUT, below asking the peers one by one.
            resp = await asyncio.wait_for(client.get("/invocations/inv_unknown"), 60)
            elapsed = time.monotonic() - started
            body = await resp.json()
    assert resp.status == 504, body
    assert sorted(body["unreachable"]) == sorted(peers)
    assert elapsed < 15


async def test_invocation_lookup__found_on_a_peer_while_another_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_views, "PEER_TIMEOUT", 1.0)
    async with silent_peer() as silent, knowing_peer("inv_there") as knowing:
        async with serve(runtime(live_rig(), nothing, [silent, knowing])) as client:
            resp = await asyncio.wait_for(client.get("/invocations/inv_there"), 60)
            body = await resp.json()
            missing = await asyncio.wait_for(client.get("/invocations/inv_nowhere"), 60)
    assert resp.status == 200 and body == {"id": "inv_there", "status": "completed"}
    assert missing.status == 504, "a silent peer may hold it: not a definite 404"


async def test_invocation_lookup__every_peer_answers_unknown__404() -> None:
    async with knowing_peer("inv_other") as a, knowing_peer("inv_other") as b:
        async with serve(runtime(live_rig(), nothing, [a, b])) as client:
            resp = await asyncio.wait_for(client.get("/invocations/inv_nowhere"), 60)
    assert resp.status == 404



async def test_reads__partition_assigned_but_not_driven__503_not_a_stale_answer() -> None:
    # Assigned here, tables still being restored: what the local tables hold may be behind.
    async with serve(runtime(EngineRig(), nothing)) as client:
        for path in ("/state/Test/k", "/Test/k/Count"):
            resp = await client.get(path)
            body = await resp.json()
            assert resp.status == 503 and "retry" in body["error"], (path, body)


@contextlib.asynccontextmanager
async def driving_peer(live: list[int]) -> AsyncIterator[str]:
    """A peer that holds no invocation and says which partitions it drives."""
    async def invocation(request: web.Request) -> web.Response:
        return web.json_response({"error": "unknown", "live_partitions": live}, status=404)

    app = web.Application()
    app.router.add_get("/invocations/{id}", invocation)
    async with listening(app) as url:
        yield url


async def test_invocation_lookup__unknown_everywhere_while_a_partition_is_not_driven__503_not_404() -> None:
    rig = EngineRig()
    rig.activate(0)
    rig.activate(1)
    async with driving_peer([2]) as partial, driving_peer([2, 3]) as full:
        async with serve(runtime(rig, nothing, [partial])) as client:
            resp = await asyncio.wait_for(client.get("/invocations/inv_somewhere"), 60)
            body = await resp.json()
        assert resp.status == 503 and "retry" in body["error"], body  # partition 3 is restoring somewhere
        async with serve(runtime(rig, nothing, [full])) as client:
            resp = await asyncio.wait_for(client.get("/invocations/inv_nowhere"), 60)
            body = await resp.json()
        assert resp.status == 404 and body["live_partitions"] == [0, 1], body


async def test_invocation_lookup__sent_elsewhere_and_not_applied_here_yet__answered_once_applied_not_404() -> None:
    # Another worker made the send durable and answered 202; this worker, the key's owner, has yet to
    # read it: the lookup waits until what the log held when it was asked is applied.
    rig = live_rig()
    key = key_on(2)
    async with serve(runtime(rig, nothing, unapplied={2: 1})) as client:
        lookup = asyncio.ensure_future(client.get("/invocations/inv_sent"))
        await asyncio.sleep(0.1)
        assert not lookup.done()
        rig.apply(2, {"op": "invoke", "id": "inv_sent", "service": "Test", "key": key, "handler": "Nap",
                      "payload": None})
        resp = await asyncio.wait_for(lookup, 60)
        body = await resp.json()
    assert resp.status == 200 and body["id"] == "inv_sent", body


async def test_invocation_lookup__a_partition_still_behind_its_log__503_retry_and_not_counted_as_covered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingress, "CATCH_UP_WAIT", 0.2)
    async with serve(runtime(live_rig(), nothing, unapplied={1: 3})) as client:
        resp = await asyncio.wait_for(client.get("/invocations/inv_unknown"), 60)
        body = await resp.json()
        forwarded = await asyncio.wait_for(client.get("/invocations/inv_unknown", headers={FORWARDED: "1"}), 60)
        peer_view = await forwarded.json()
    assert resp.status == 503 and body["moving"] == [1], body
    assert forwarded.status == 404 and peer_view["live_partitions"] == [0, 2, 3], peer_view


async def test_invocation_lookup__last_record_dead_lettered_not_applied__still_caught_up_404(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The partition's last record held no valid command: the agent dead-lettered it, nothing applied.
    monkeypatch.setattr(ingress, "CATCH_UP_WAIT", 0.2)
    rig = live_rig()
    rt = runtime(rig, nothing, unapplied={3: 1})
    rt.delivery.guards["invocations"].next[TP("app-internal", 3)] = rig.offsets[3] + 2  # handled up to the end
    async with serve(rt) as client:
        resp = await asyncio.wait_for(client.get("/invocations/inv_unknown"), 60)
        body = await resp.json()
    assert resp.status == 404 and body["live_partitions"] == [0, 1, 2, 3], body


async def test_invocation_lookup__end_offsets_unknown__503_not_404() -> None:
    async with serve(runtime(live_rig(), nothing, unapplied=KafkaConnectionError("down"))) as client:
        resp = await asyncio.wait_for(client.get("/invocations/inv_unknown"), 60)
        body = await resp.json()
    assert resp.status == 503 and body["moving"] == [0, 1, 2, 3], body


def runtime_owned_by(owner: str) -> Any:
    """Views of a worker that owns no partition: every key is forwarded to ``owner``."""
    rt = runtime(EngineRig(), nothing, [owner])
    changelog = rt.tables.invocations.changelog_topic.get_topic_name()
    owned = {owner: {changelog: set(range(PARTITIONS))}}
    rt.app.assignor.table_metadata = lambda topic: owned if topic == changelog else {}
    return rt


@contextlib.asynccontextmanager
async def owner(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with listening(app) as url:
        yield url


async def test_forward__owner_down_503_owner_dying_mid_call_504_and_the_answer_keeps_its_invocation_id() -> None:
    async def answers(request: web.Request) -> web.StreamResponse:
        return web.json_response({"tag": "t", "count": 1}, headers={"x-streamapp-invocation-id": "inv_x"})

    async def dies(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()  # the owner is killed while the call waits
        await asyncio.sleep(1)  # never answers on that connection
        raise AssertionError("unreachable")

    async with owner(answers) as url, serve(runtime_owned_by(url)) as client:
        resp = await client.post("/Test/k/Nap", json={"tag": "t"})
        assert resp.status == 200 and resp.headers["x-streamapp-invocation-id"] == "inv_x"
    async with owner(dies) as url, serve(runtime_owned_by(url)) as client:
        resp = await client.post("/Test/k/Nap", json={"tag": "t"})
        body = await resp.json()
        assert resp.status == 504 and "retry" in body["error"], body
    async with owner(answers) as url:
        pass  # stopped: nothing listens there any more, as with a killed worker before its session expires
    async with serve(runtime_owned_by(url)) as client:
        for method, path in (("POST", "/Test/k/Nap"), ("GET", "/state/Test/k"), ("GET", "/Test/k/Count")):
            resp = await client.request(method, path, json={"tag": "t"})
            body = await resp.json()
            assert resp.status == 503 and "retry" in body["error"], (path, body)


async def test_forward__the_callers_trace_context_reaches_the_owner() -> None:
    seen: list[dict[str, str]] = []

    async def answers(request: web.Request) -> web.StreamResponse:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response(1)

    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with owner(answers) as url, serve(runtime_owned_by(url)) as client:
        resp = await client.post("/Test/k/Nap", json={"tag": "t"},
                                 headers={"traceparent": traceparent, "tracestate": "a=1"})
        assert resp.status == 200
    [headers] = seen
    assert headers["traceparent"] == traceparent and headers["tracestate"] == "a=1"
