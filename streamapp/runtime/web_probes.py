"""Views for orchestrators and monitoring: liveness, readiness, Prometheus metrics, the longest key queues.

    GET /livez              200 {"live": true}; 503 when fenced by the stall watchdog or its tick stopped
    GET /readyz             200 {"ready": true} once every assigned partition is driven here; 503 before
    GET /metrics            Prometheus text exposition (``runtime/metrics.py``)
    GET /metrics/top-keys   ?n=10: the keys with the longest queues here, as JSON (operator token*)

    * keys are user data; a Prometheus label per key would also make unbounded series

``web.Views`` serves these (the route table, ``runtime/routes.py``, names them).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from streamapp.durable.errors import InvalidInputError
from streamapp.runtime.ingress import Ingress
from streamapp.runtime.metrics import TOP_KEYS_MAX

# Version 0.0.4 of the text format: what the exposition is, and what every Prometheus server reads.
METRICS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class ProbeViews:
    rt: Ingress

    async def livez(self, request: web.Request) -> web.Response:
        body = self.rt.liveness()
        return web.json_response(body, status=200 if body["live"] else 503)

    async def readyz(self, request: web.Request) -> web.Response:
        body = self.rt.readiness()
        return web.json_response(body, status=200 if body["ready"] else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.rt.metrics(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def top_keys(self, request: web.Request) -> web.Response:
        text = request.query.get("n", "10")
        if not text.isdecimal() or not 1 <= int(text) <= TOP_KEYS_MAX:
            raise InvalidInputError(f"n must be a whole number from 1 to {TOP_KEYS_MAX}")
        return web.json_response({"keys": self.rt.top_keys(int(text))})
