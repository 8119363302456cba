"""HTTP ingress and inspection views on Faust's aiohttp web server.

    POST /{Service}/{key}/{handler}             call: wait, 200 + JSON result
    POST /{Service}/{key}/{handler}/send        send: 202 {"invocationId"} [?delay=10s]
    GET  /{Service}/{key}/{handler}             shared (read-only) handlers only
    GET  /invocations, /invocations/{id}        status, result or error        (operator token*)
    POST /invocations/{id}/resume|kill|cancel|purge, /invocations/bulk/...
                                                operator actions (runtime/operator_views.py; token*)
    GET  /state/{Service}/{key}                 the key's state (``streamapp kv get``; operator token*)
    GET  /subscriptions, /health, /openapi.json (built by runtime.openapi)
    GET  /livez, /readyz, /metrics, /metrics/top-keys (runtime.web_probes)

    * needed when the server listens beyond loopback (``Views.check_token``)

The routes are declared once, in ``runtime.routes``; the views reach the
runtime only through ``runtime.ingress.Ingress``.

A request for a key owned by another worker is forwarded to the owner (the
worker assigned the key's partition of the internal topic, at the URL it
advertises). A lookup of an invocation this worker does not hold asks every
peer at once, each for at most ``PEER_TIMEOUT`` seconds.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from aiokafka.errors import MessageSizeTooLargeError

from streamapp.durable import codec, ids
from streamapp.durable.context import SharedContext
from streamapp.durable.errors import InvalidInputError
from streamapp.runtime import commands, openapi, tracing
from streamapp.runtime.ingress import Ingress, NotDrivenError, RuntimeIngress
from streamapp.runtime.operator_views import Found, OperatorViews, not_found, view
from streamapp.runtime.routes import FORWARDED, INVOCATION_HEADER, ROUTES, Route
from streamapp.runtime.web_probes import ProbeViews

if TYPE_CHECKING:
    from streamapp.runtime.app import Runtime

CALL_TIMEOUT = 600.0
PEER_TIMEOUT = 5.0   # seconds a peer has to answer a lookup
PEER_CONCURRENCY = 16  # peer lookups in flight at once, over all requests
_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def parse_delay(text: str) -> float:
    match = _DELAY.match(text)
    if not match:
        raise InvalidInputError(f"delay {text!r} is not a duration like 10s, 500ms, 2m")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds):  # 400 digits: inf, which no JSON can carry
        raise InvalidInputError(f"delay {text[:40]!r} is out of range")
    return seconds


class Views(OperatorViews, ProbeViews):
    def __init__(self, ingress: Ingress) -> None:
        self.rt = ingress
        self.session: aiohttp.ClientSession | None = None
        self.peer_slots = asyncio.Semaphore(PEER_CONCURRENCY)
        self.spec = openapi.document(ingress.registry)

    # -- helpers -------------------------------------------------------------
    def owner_url(self, okey: str) -> str | None:
        """Base URL of the worker owning ``okey``'s partition, or None for this worker."""
        try:
            return self.rt.owner(okey)
        except NotDrivenError as exc:
            raise web.HTTPServiceUnavailable(text=json.dumps({"error": str(exc)}),
                                             content_type="application/json") from None

    async def forward(self, request: web.Request, base: str, body: bytes | None) -> web.Response:
        if request.headers.get(FORWARDED):
            return json_error(503, "key is moving between workers; retry")
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT + 10))
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "idempotency-key",
                                                                                 "authorization", *tracing.HEADERS)}
        headers[FORWARDED] = "1"
        try:
            async with self.session.request(request.method, base + request.path_qs, data=body,
                                            headers=headers) as resp:
                passed = {k: v for k, v in resp.headers.items() if k.lower() == INVOCATION_HEADER}
                return web.Response(body=await resp.read(), status=resp.status, content_type="application/json",
                                    headers=passed)
        except aiohttp.ClientConnectorError:
            # Nothing reached the owner: killed and still holding its partitions until
            # its session expires, or not listening yet.
            return json_error(503, f"the key's owner {base} does not answer; retry")
        except (aiohttp.ClientError, OSError, TimeoutError):
            # Sent, but no answer came back (the owner died or hung mid-call): it may have run.
            return json_error(504, f"the key's owner {base} stopped answering; retry with the same idempotency-key")

    async def read_body(self, request: web.Request) -> bytes:
        limit = self.rt.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        # read(n) returns what has arrived, up to n bytes: read until the end or past the limit.
        body = bytearray()
        while chunk := await request.content.read(limit + 1 - len(body)):
            body += chunk
            if len(body) > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
        return bytes(body)

    async def invoke_or_413(self, target: dict[str, Any], source: Any) -> None:
        """Escaping can make the invocation larger than the body: the broker refuses it."""
        try:
            await self.rt.invoke(target, source=source)
        except MessageSizeTooLargeError:
            raise web.HTTPRequestEntityTooLarge(
                max_size=self.rt.settings.max_body_bytes, actual_size=len(codec.dumps(target["payload"])),
                text=json.dumps({"error": "invocation too large for the internal topic"}),
                content_type="application/json",
            ) from None

    # -- ingress ---------------------------------------------------------------
    async def invoke(self, request: web.Request, send: bool = False) -> web.Response:
        service, key, name = (request.match_info[k] for k in ("service", "key", "handler"))
        if request.method not in ("GET", "POST"):
            return json_error(405, f"method {request.method} not allowed", allowed=["GET", "POST"])
        handler = self.rt.handler(service, name)
        if handler is None:
            svc = self.rt.registry.services.get(service)
            what = f"service {service}" if svc is None else f"handler {service}/{name}"
            return json_error(404, f"unknown {what}")
        if handler.kind == "shared":
            if send:
                return json_error(405, f"{service}/{name} is read-only: call it, do not send to it")
        elif request.method == "GET":
            return json_error(405, f"{service}/{name} changes state: use POST", allowed=["POST"])
        body = await self.read_body(request)
        okey = commands.object_key(service, key)
        owner = None if send else self.owner_url(okey)
        if owner is not None:
            return await self.forward(request, owner, body)
        if handler.kind == "shared":
            result = await handler.fn(SharedContext(service, key, self.rt.state(okey)))
            return web.json_response(codec.to_json(result))
        payload = codec.loads(body) if (handler.input_type is not None or body.strip()) else None
        handler.decode_input(payload)
        delay = parse_delay(request.query["delay"]) if "delay" in request.query else 0.0
        idem = request.headers.get("idempotency-key")
        if idem is not None and not idem.isascii():
            try:
                idem.encode("utf-8")  # aiohttp keeps undecodable header bytes as surrogates
            except UnicodeEncodeError:
                return json_error(400, "idempotency-key is not valid UTF-8")
        inv_id = ids.for_idempotency_key(self.rt.settings.app_id, handler.method, key, idem) if idem \
            else ids.random_id()
        target = {"id": inv_id, "service": service, "key": key, "handler": name, "payload": payload,
                  "not_before": time.time() + delay if delay > 0 else None}
        if tracing.active is not None:
            tracing.active.stamp(target, request.headers, {"streamapp.ingress": "http"})
        if send:
            await self.invoke_or_413(target, source={"http": idem} if idem else {"http": None})
            return web.json_response({"invocationId": inv_id, "status": "Accepted"}, status=202)
        rec = self.rt.outcome(inv_id)
        if rec is None:
            try:
                fut = self.rt.wait(inv_id, okey)
            except NotDrivenError as exc:
                return json_error(503, str(exc))
            try:  # the waiter goes in every exit: 413, broker error, timeout, cancelled request
                if not self.rt.accepted(inv_id):
                    await self.invoke_or_413(target, source={"http": idem})
                rec = await asyncio.wait_for(fut, CALL_TIMEOUT)
            except TimeoutError:
                return json_error(504, "invocation still running", invocationId=inv_id)
            finally:
                self.rt.stop_waiting(inv_id, fut)
        if rec.get("moved"):
            return json_error(503, "key moved to another worker while waiting; retry", invocationId=inv_id)
        if rec["status"] == "failed":
            code = rec.get("code") or 500
            return json_error(code if 400 <= code <= 599 else 500, rec["error"], invocationId=inv_id)
        return web.json_response(rec["result"], headers={INVOCATION_HEADER: inv_id})

    # -- inspection --------------------------------------------------------------
    async def state(self, request: web.Request) -> web.Response:
        service, key = request.match_info["service"], request.match_info["key"]
        if service not in self.rt.registry.services:
            return json_error(404, f"unknown service {service}")
        okey = commands.object_key(service, key)
        owner = self.owner_url(okey)
        if owner is not None:
            return await self.forward(request, owner, None)
        return web.json_response({"service": service, "key": key, "state": self.rt.state(okey)})

    # -- invocations -------------------------------------------------------------
    async def ask_peers(self, request: web.Request, path: str) -> tuple[list[tuple[int, Any]], list[str]]:
        """GET ``path`` from every peer at once; (answers, peers that did not answer in time).

        Bounded: at most ``PEER_TIMEOUT`` seconds in all, and ``PEER_CONCURRENCY``
        peer requests in flight over all requests, so a flood of lookups of
        unknown ids cannot pile up connections to every peer.
        """
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT + 10))
        session = self.session
        headers = {FORWARDED: "1"}
        if "authorization" in request.headers:
            headers["authorization"] = request.headers["authorization"]

        async def ask(base: str) -> tuple[int, Any]:
            async with self.peer_slots, session.get(base + path, headers=headers) as resp:
                return resp.status, await resp.json(content_type=None)

        peers = self.rt.peers()
        tasks = {asyncio.ensure_future(ask(base)): base for base in peers}
        if not tasks:
            return [], []
        done, pending = await asyncio.wait(tasks, timeout=PEER_TIMEOUT)
        for task in pending:
            task.cancel()
        out, silent = [], [tasks[t] for t in pending]
        for task in done:
            try:
                out.append(task.result())
            except (aiohttp.ClientError, OSError, ValueError):
                silent.append(tasks[task])
        return out, sorted(silent)

    async def find(self, request: web.Request, inv_id: str) -> Found:
        """The invocation's view (here or on a peer); else the peers that could not say, the
        partitions no worker that answered covers (being restored, between owners, catching
        up), and those this worker covers.

        Only the tables of a partition a worker drives, and only once it applied every
        command written to it before the question, can tell that an invocation is
        unknown (a send just accepted by another worker is in the log, not yet in the
        tables): "not found" is definite when the workers that said so cover every
        partition between them (each 404 names the partitions its worker covers).
        """
        held = self.rt.lookup(inv_id)
        if held is not None:
            return Found(view(held[0], running=held[1]), [], [], set())
        answers: list[tuple[int, Any]] = []
        silent: list[str] = []
        forwarded = bool(request.headers.get(FORWARDED))
        if forwarded:
            here = await self.rt.caught_up()
        else:  # the peers are asked while this worker catches up
            here, (answers, silent) = await asyncio.gather(
                self.rt.caught_up(), self.ask_peers(request, f"/invocations/{inv_id}"))
        held = self.rt.lookup(inv_id)  # applied while this worker caught up
        if held is not None:
            return Found(view(held[0], running=held[1]), [], [], here)
        if forwarded:
            return Found(None, [], [], here)  # the asking worker weighs this answer with the others
        covered = set(here)
        for status, body in answers:
            if status == 200:
                return Found(body, [], [], here)
            if status == 404 and isinstance(body, dict) and isinstance(body.get("live_partitions"), list):
                covered.update(p for p in body["live_partitions"] if isinstance(p, int))
        return Found(None, silent, sorted(set(range(self.rt.settings.partitions)) - covered), here)

    async def invocation(self, request: web.Request) -> web.Response:
        inv_id = request.match_info["id"]
        found = await self.find(request, inv_id)
        if found.view is None:
            return not_found(inv_id, found)
        return web.json_response(found.view)

    def guard(self, view: View) -> View:
        """``view`` behind the operator token (``check_token``)."""
        async def guarded(request: web.Request) -> web.StreamResponse:
            denied = self.check_token(request)
            return denied if denied is not None else await view(request)

        return guarded

    def check_token(self, request: web.Request) -> web.Response | None:
        """Operator actions and inspection (state, invocations) need the token beyond loopback.

        With a token set it is always needed; without one, on loopback none is.
        """
        token = self.rt.settings.operator_token
        loopback = self.rt.settings.web_host in ("127.0.0.1", "localhost", "::1")
        if token is None:
            if loopback:
                return None
            return json_error(403, "operator actions and inspection are disabled: set STREAMAPP_OPERATOR_TOKEN")
        given = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            return json_error(401, "operator token required (authorization: Bearer ...)")
        return None

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(self.rt.health())

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.spec)

    async def subscriptions(self, request: web.Request) -> web.Response:
        return web.json_response({"subscriptions": [
            {"source": f"kafka://{topic}", "sink": f"service://{target}"}
            for topic, target in self.rt.settings.subscriptions
        ]})


@web.middleware
async def errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except InvalidInputError as exc:
        return json_error(400, str(exc))
    except web.HTTPException as exc:
        if exc.content_type == "application/json":
            raise
        return json_error(exc.status, exc.reason)


View = Callable[[web.Request], Awaitable[web.StreamResponse]]


def install(web_app: web.Application, runtime: Runtime) -> None:
    """Serve the runtime's ingress on ``web_app`` (Faust's aiohttp application)."""
    serve(web_app, RuntimeIngress(runtime))


def serve(web_app: web.Application, ingress: Ingress) -> None:
    """Serve ``routes.ROUTES`` over ``ingress`` on ``web_app``; handler routes go last, when the server starts.

    aiohttp tries routes in the order they were added, so the catch-all
    ``/{service}/{key}/{handler}`` added first would shadow any three-segment
    route added after it (by a later entry of the table, by Faust, by an
    extension). The fallbacks are therefore added on start-up, after every
    route added before the server starts.
    """
    views = Views(ingress)
    web_app.middlewares.append(errors_as_json)

    def add(router: web.UrlDispatcher, route: Route) -> None:
        view: View = functools.partial(getattr(views, route.view), **dict(route.args))
        if route.guarded:
            view = views.guard(view)
        router.add_route(route.method, route.path, view)

    for route in ROUTES:
        if not route.fallback:
            add(web_app.router, route)

    async def add_fallbacks(app: web.Application) -> None:
        for route in ROUTES:
            if route.fallback:
                add(app.router, route)

    web_app.on_startup.append(add_fallbacks)
