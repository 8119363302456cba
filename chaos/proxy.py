"""A recording proxy in front of the downstream backend: who called what, and when.

Each worker incarnation gets its own base URL, ``{proxy}/w/{incarnation}``, as
``STREAMAPP_DOWNSTREAM_URL``; the proxy strips the prefix, forwards the call
unchanged (method, path, body, idempotency key) and records it with the
incarnation and the wall-clock times it arrived and was answered. The backend
alone cannot say which worker made a call; this is what lets the checks see
a step executed by a worker that had already lost its partition.

It runs its own event loop in a daemon thread, so the driver can block (on a
subprocess, on a sleep) without delaying calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

IDEMPOTENCY_HEADER = "idempotency-key"


@dataclass
class Call:
    incarnation: str
    method: str
    path: str  # backend path, without the /w/{incarnation} prefix
    key: str | None  # idempotency key (create-post, update-feed)
    post_id: str | None  # from the path, the body or the answer
    start: float  # wall clock, when the request arrived
    end: float  # when the backend's answer came back
    status: int  # backend status; 0 when the backend could not be reached

    @property
    def kind(self) -> str:
        if self.path == "/posts":
            return "create-post"
        if self.path.endswith("/status"):
            return "get-post-status"
        if self.path.startswith("/feeds/"):
            return "update-feed"
        return self.path

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "kind": self.kind}


class RecordingProxy:
    def __init__(self, backend_url: str, journal: Path) -> None:
        self.backend_url = backend_url.rstrip("/")
        self.journal = journal
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy", daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    def start(self) -> RecordingProxy:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def url_for(self, incarnation: str) -> str:
        return f"{self.url}/w/{incarnation}"

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):  # stopping anyway
                asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    # -- in the proxy's loop ---------------------------------------------------
    async def _start(self) -> str:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/w/{incarnation}/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        start = time.time()
        incarnation = request.match_info["incarnation"]
        path = "/" + request.match_info["tail"]
        body = await request.read()
        key = request.headers.get(IDEMPOTENCY_HEADER)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", IDEMPOTENCY_HEADER)}
        status, payload, content_type = 0, b'{"error": "backend unreachable"}', "application/json"
        assert self._session is not None
        try:
            async with self._session.request(request.method, self.backend_url + path + _query(request),
                                             data=body or None, headers=headers) as resp:
                status, payload = resp.status, await resp.read()
                content_type = resp.content_type
        except (aiohttp.ClientError, TimeoutError):
            pass
        call = Call(incarnation, request.method, path, key, _post_id(path, body, payload), start, time.time(), status)
        with self._lock:
            self.calls.append(call)
        with self.journal.open("a") as f:
            f.write(json.dumps(call.to_json()) + "\n")
        return web.Response(body=payload, status=status or 502, content_type=content_type)


def _query(request: web.Request) -> str:
    return f"?{request.query_string}" if request.query_string else ""


def _post_id(path: str, body: bytes, answer: bytes) -> str | None:
    if path.startswith("/posts/") and path.endswith("/status"):
        return path[len("/posts/"):-len("/status")]
    for raw in (body, answer):
        try:
            data = json.loads(raw or b"null")
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("postId"), str):
            return data["postId"]
    return None
