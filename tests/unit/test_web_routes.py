"""The route table: what the router serves, what the document describes, and which route wins.

The views run over a small in-memory ``Ingress`` (the narrow interface the
HTTP layer has to the runtime), on a real aiohttp server.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from streamapp.config import Settings
from streamapp.durable import Registry
from streamapp.durable.service import Handler
from streamapp.runtime import openapi, routes
from streamapp.runtime import web as web_views
from tests.support.services import services as test_services


class MemoryIngress:
    """An ``Ingress`` holding one worker's state in dicts: it owns every key, has no peers."""

    def __init__(self) -> None:
        self.settings = Settings()
        self.registry = Registry(test_services)
        self.states: dict[str, dict[str, Any]] = {}
        self.held: dict[str, dict[str, Any]] = {}  # invocation records by id
        self.operated: list[tuple[str, str, str, str]] = []

    def handler(self, service: str, name: str) -> Handler | None:
        return self.registry.lookup(service, name)

    def owner(self, okey: str) -> str | None:
        return None

    def peers(self) -> list[str]:
        return []

    async def caught_up(self) -> set[int]:
        return set(range(self.settings.partitions))

    async def invoke(self, target: dict[str, Any], source: Any) -> None:
        raise AssertionError("not used here")

    def wait(self, inv_id: str, okey: str) -> asyncio.Future[dict[str, Any]]:
        raise AssertionError("not used here")

    def stop_waiting(self, inv_id: str, fut: asyncio.Future[dict[str, Any]]) -> None:
        raise AssertionError("not used here")

    def accepted(self, inv_id: str) -> bool:
        return False

    def outcome(self, inv_id: str) -> dict[str, Any] | None:
        return None

    def state(self, okey: str) -> dict[str, Any]:
        return dict(self.states.get(okey, {}))

    def lookup(self, inv_id: str) -> tuple[dict[str, Any], bool] | None:
        return (self.held[inv_id], False) if inv_id in self.held else None

    def unfinished(self) -> list[tuple[dict[str, Any], bool]]:
        return []

    async def operate(self, service: str, key: str, inv_id: str, action: str) -> None:
        self.operated.append((service, key, inv_id, action))

    def health(self) -> dict[str, Any]:
        return {"ready": True, "live_partitions": [], "running": 0, "pending": 0}


@contextlib.asynccontextmanager
async def client_for(app: web.Application) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_three_segment_route_added_after_install__is_reached_not_the_handler_route() -> None:
    app = web.Application()
    web_views.serve(app, MemoryIngress())

    async def peek(request: web.Request) -> web.Response:
        return web.json_response({"peeked": request.match_info["key"]})

    app.router.add_get("/{service}/{key}/peek", peek)  # same shape as /{service}/{key}/{handler}
    async with client_for(app) as client:
        later = await client.get("/Test/k1/peek")
        shared = await client.get("/Test/k1/Ticks")  # a handler route still answers
        unknown = await client.get("/Test/k1/Nope")
        assert (later.status, await later.json()) == (200, {"peeked": "k1"})
        assert shared.status == 200, await shared.text()
        assert (unknown.status, await unknown.json()) == (404, {"error": "unknown handler Test/Nope"})


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


async def test_route_table__every_documented_fixed_path_is_served_by_its_own_view() -> None:
    ingress = MemoryIngress()
    app = web.Application()
    web_views.serve(app, ingress)
    async with client_for(app):  # started: the handler routes are added too
        doc = openapi.document(ingress.registry)
        fixed = [r for r in routes.ROUTES if not r.fallback]
        assert {(r.path, r.method.lower()) for r in fixed} <= {
            (path, method) for path, ops in doc["paths"].items() for method in ops}
        for route in fixed:
            match = await app.router.resolve(make_mocked_request(route.method, _concrete(route.path)))
            assert match.http_exception is None, route.path
            assert match.route.resource is not None
            assert match.route.resource.canonical == route.path, (route.path, match.route.resource.canonical)


async def test_operator_routes__each_action_reaches_the_invocation_key() -> None:
    ingress = MemoryIngress()
    ingress.held["inv_1"] = {"id": "inv_1", "service": "Test", "handler": "Nap", "key": "k", "status": "paused",
                             "attempt": 3, "created": 1.0, "journal": []}
    app = web.Application()
    web_views.serve(app, ingress)
    async with client_for(app) as client:
        kill = await client.post("/invocations/inv_1/kill")
        resume = await client.post("/invocations/inv_1/resume")
        unknown = await client.post("/invocations/inv_2/resume")
        assert (kill.status, await kill.json()) == (202, {"invocationId": "inv_1", "action": "kill",
                                                          "status": "Accepted"})
        assert (resume.status, unknown.status) == (202, 404)
    assert ingress.operated == [("Test", "k", "inv_1", "kill"), ("Test", "k", "inv_1", "resume")]
