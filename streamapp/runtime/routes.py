"""Every HTTP route of the ingress, declared once: path, method, view, access, OpenAPI operation.

``web.install`` registers these routes and ``openapi.document`` describes
them; the response models they refer to (``#/components/schemas/...``) are
declared here too (``MODELS``). Handler routes are one route per shape
(``/{service}/{key}/{handler}`` and ``.../send``) and are documented once per
registered handler (``openapi``); they are fallbacks: registered after
every other route, so they shadow none (aiohttp tries routes in order).

    method path                                view         access
    GET    /invocations                        invocations  operator*
    GET    /invocations/{id}                   invocation   operator*
    POST   /invocations/bulk/{action}          bulk         operator*
    POST   /invocations/{id}/resume, .../kill  operate      operator*
           .../cancel, .../purge
    GET    /state/{service}/{key}              state        operator*
    GET    /dead-letters                       dead_letters operator*
    POST   /dead-letters/replay                replay       operator*
    GET    /subscriptions, /health, /openapi.json           open
    GET    /livez, /readyz, /metrics                        open
    GET    /metrics/top-keys                   top_keys     operator*
    *      /{service}/{key}/{handler}          invoke       open (fallback)
    POST   /{service}/{key}/{handler}/send     invoke       open (fallback)

    * a bearer token beyond loopback (``web.Views.check_token``)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from streamapp.durable.service import Registry

OPENAPI_VERSION = "3.0.3"
JSON = "application/json"
# What a path parameter ``{key}`` matches in the aiohttp router: no ``/``.
KEY_PATTERN = r"^[^/]+$"
DELAY_PATTERN = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)?\s*$"
STATUSES = ["pending", "running", "scheduled", "sleeping", "retrying", "paused", "completed", "failed"]


# -- building blocks of operations --------------------------------------------------
def error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}


def ok(description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def param(name: str, where: str, description: str, schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "description": description, "schema": schema}


INVOCATION_HEADER = "x-streamapp-invocation-id"  # on a call's 200 answer, also when forwarded
FORWARDED = "x-streamapp-forwarded"  # a request one worker passed to another (answered there, not passed on)
KEY_PARAM = param("key", "path", "The object's key: one actor per (service, key).",
                   {"type": "string", "minLength": 1, "pattern": KEY_PATTERN})
MOVING = error("No worker owns the key's partition yet, its owner is still starting it or does not answer (killed, "
               "its session not expired yet), or the key moved while the call waited: retry.")
OWNER_GONE = error("The key's owner stopped answering mid-request (it died): retry, with the same "
                   "idempotency-key for a call.")
TOO_LARGE = error("The body is larger than STREAMAPP_MAX_BODY_BYTES.")
IDEMPOTENCY = param("idempotency-key", "header", "Deduplicates: the same key returns the same invocation.",
                     {"type": "string"}, required=False)


def probe(flag: str) -> dict[str, Any]:
    """The body of a probe: its verdict, and why when it fails."""
    return {"type": "object", "required": [flag], "properties": {
        flag: {"type": "boolean"}, "reason": {"type": "string"},
        "tick_age": {"type": "number", "nullable": True,
                     "description": "Seconds since the stall watchdog's last tick (null before the first)."},
        "live_partitions": {"type": "array", "items": {"type": "integer"}}}}


# -- the table ---------------------------------------------------------------------------
Operation = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Route:
    method: str                 # "GET", "POST", or "*" (the view answers 405 itself)
    path: str                   # aiohttp pattern, also the OpenAPI path of a fixed route
    view: str                   # the ``web.Views`` method that serves it
    operation: Operation | Callable[[Registry], Operation] | None = None  # None: one per handler
    guarded: bool = False       # operator token beyond loopback
    fallback: bool = False      # registered after every other route
    args: tuple[tuple[str, Any], ...] = ()  # keyword arguments for the view

    def describe(self, registry: Registry) -> Operation:
        """The OpenAPI operation of a fixed route."""
        assert self.operation is not None, self.path
        op = self.operation(registry) if callable(self.operation) else self.operation
        if not self.guarded:
            return op
        # Beyond loopback a token is required; on loopback none is needed.
        return {**op, "security": [{}, {"operatorToken": []}], "responses": {**REFUSED, **op["responses"]}}


REFUSED = {
    "401": error("The server has an operator token and the request does not carry it."),
    "403": error("The server listens beyond loopback and has no operator token: these views are off."),
}
INV_ID = param("id", "path", "An invocation id (inv_...).", {"type": "string", "minLength": 1, "pattern": KEY_PATTERN})
UNREACHABLE = error("Not held by this worker, and a peer did not answer in time; retry.")
RESTORING = error("Not found on the workers that answered, and a partition is between owners, its tables are "
                  "being restored, or its owner has not applied what its log held when asked: retry.")


def _operate(action: str, summary: str) -> Route:
    return Route("POST", f"/invocations/{{id}}/{action}", "operate", {
        "tags": ["operate"], "operationId": f"invocations.{action}", "summary": summary, "parameters": [INV_ID],
        "responses": {
            "202": ok("Accepted: the action is durable.", {"$ref": "#/components/schemas/OperatorAction"}),
            "404": error("Unknown invocation."),
            "409": error("Finished already (purge: not finished yet)."),
            "503": RESTORING,
            "504": UNREACHABLE,
        },
    }, guarded=True, args=(("action", action),))


def _state(registry: Registry) -> Operation:
    service = param("service", "path", "A registered service.", {"type": "string", "enum": sorted(registry.services)})
    return {
        "tags": ["inspect"], "operationId": "state.get", "summary": "A key's state (streamapp kv get)",
        "parameters": [service, KEY_PARAM],
        "responses": {
            "200": ok("The key's state (empty when it has none).", {
                "type": "object", "required": ["service", "key", "state"],
                "properties": {"service": {"type": "string"}, "key": {"type": "string"},
                               "state": {"type": "object", "additionalProperties": True}}}),
            "404": error("Unknown service."),
            "503": MOVING,
            "504": OWNER_GONE,
        },
    }


FILTER_PARAMS = [
    param("service", "query", "Only this service's invocations.", {"type": "string"}, required=False),
    param("handler", "query", "Only this handler's.", {"type": "string"}, required=False),
    param("key", "query", "Only this key's.", {"type": "string"}, required=False),
    param("status", "query", "Only invocations in this status.", {"type": "string", "enum": STATUSES}, required=False),
]
DEAD_LETTER_FILTERS = [
    param("service", "query", "Only dead letters of this service.", {"type": "string"}, required=False),
    param("handler", "query", "Only of this handler.", {"type": "string"}, required=False),
    param("key", "query", "Only of this key.", {"type": "string"}, required=False),
    param("reason", "query", "Only those whose reason contains this text.", {"type": "string"}, required=False),
    param("since", "query", "Only those written at or after this time (epoch seconds).", {"type": "number"},
          required=False),
    param("until", "query", "Only those written before this time (epoch seconds).", {"type": "number"},
          required=False),
    param("partition", "query", "Only those of this partition of the dead-letter topic.", {"type": "integer"},
          required=False),
    param("offset", "query", "Only the one at this offset.", {"type": "integer"}, required=False),
]
BULK_ACTION = param("action", "path", "What to do with each match: resume (the paused ones), kill or cancel.",
                    {"type": "string", "enum": ["resume", "kill", "cancel"]})

ROUTES: tuple[Route, ...] = (
    Route("POST", "/invocations/bulk/{action}", "bulk", {
        "tags": ["operate"], "operationId": "invocations.bulk",
        "summary": "The same action for every unfinished invocation the filters match, on every worker",
        "parameters": [BULK_ACTION, *FILTER_PARAMS,
                       param("all", "query", "true: act on every unfinished invocation (no filter).",
                             {"type": "string", "enum": ["true"]}, required=False)],
        "responses": {
            "202": ok("Accepted: the actions are durable.", {
                "type": "object", "required": ["action", "matched", "invocationIds", "status"],
                "properties": {"action": {"type": "string"}, "matched": {"type": "integer"},
                               "invocationIds": {"type": "array", "items": {"type": "string"}},
                               "status": {"type": "string", "enum": ["Accepted"]},
                               "unreachable": {"type": "array", "items": {"type": "string"},
                                               "description": "Peers that did not answer: not acted on."}}}),
            "400": error("No filter (and not all=true), or an unknown status."),
            "404": error("Unknown action."),
        },
    }, guarded=True),
    Route("GET", "/invocations", "invocations", {
        "tags": ["inspect"], "operationId": "invocations.list", "summary": "Unfinished invocations of every worker",
        "parameters": [
            *FILTER_PARAMS,
            param("sort", "query", "created (oldest first, the default) or wakeAt (next wake-up first).",
                  {"type": "string", "enum": ["created", "wakeAt"]}, required=False),
            param("limit", "query", "At most this many (default: all).", {"type": "integer", "minimum": 0},
                  required=False),
            param("offset", "query", "Skip this many first.", {"type": "integer", "minimum": 0}, required=False),
        ],
        "responses": {"400": error("An unknown status or sort, or a negative limit or offset."), "200": ok(
            "A page of the unfinished invocations.", {
            "type": "object", "required": ["invocations", "total"],
            "properties": {"invocations": {"type": "array", "items": {"$ref": "#/components/schemas/Invocation"}},
                           "total": {"type": "integer", "description": "How many matched in all."},
                           "unreachable": {"type": "array", "items": {"type": "string"},
                                           "description": "Peers that did not answer in time."}}})},
    }, guarded=True),
    Route("GET", "/invocations/{id}", "invocation", {
        "tags": ["inspect"], "operationId": "invocations.get",
        "summary": "An invocation's status, result or error, and journal", "parameters": [INV_ID],
        "responses": {"200": ok("The invocation.", {"$ref": "#/components/schemas/Invocation"}),
                      "404": error("Unknown invocation."), "503": RESTORING, "504": UNREACHABLE},
    }, guarded=True),
    _operate("resume", "Run a paused invocation again"),
    _operate("kill", "Fail an invocation now; its key moves on"),
    _operate("cancel", "Stop an invocation after the step under way; its key moves on"),
    _operate("purge", "Forget a finished invocation's outcome"),
    Route("GET", "/state/{service}/{key}", "state", _state, guarded=True),
    Route("GET", "/ui", "ui", {
        "tags": ["inspect"], "operationId": "ui", "summary": "The operator's web page (its data calls need the token "
                                                             "beyond loopback, as the JSON views do)",
        "responses": {"200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}}},
    }),
    Route("GET", "/dead-letters", "dead_letters", {
        "tags": ["inspect"], "operationId": "deadLetters.list", "summary": "Dead letters with their reasons",
        "parameters": [*DEAD_LETTER_FILTERS, param("limit", "query", "At most this many (default 1000).",
                                                   {"type": "integer", "minimum": 0}, required=False)],
        "responses": {
            "200": ok("The matching dead letters, oldest first.", {
                "type": "object", "required": ["deadLetters", "truncated"],
                "properties": {"deadLetters": {"type": "array", "items": {"type": "object"}},
                               "truncated": {"type": "boolean", "description": "More matched than the limit."}}}),
            "400": error("A filter that cannot be read."),
            "504": error("The dead-letter topic could not be read in time."),
        },
    }, guarded=True),
    Route("POST", "/dead-letters/replay", "replay", {
        "tags": ["operate"], "operationId": "deadLetters.replay",
        "summary": "Replay the matching dead letters into their handlers (each at most once)",
        "parameters": [*DEAD_LETTER_FILTERS, param("all", "query", "true: replay every dead letter.",
                                                   {"type": "string", "enum": ["true"]}, required=False)],
        "responses": {
            "202": ok("Accepted: the replays are durable.", {
                "type": "object", "required": ["replayed", "invocationIds", "skipped", "truncated", "status"],
                "properties": {"replayed": {"type": "integer"},
                               "invocationIds": {"type": "array", "items": {"type": "string"}},
                               "skipped": {"type": "array", "items": {"type": "object"}},
                               "truncated": {"type": "boolean"}, "status": {"type": "string"}}}),
            "400": error("No filter (and not all=true), or a filter that cannot be read."),
            "504": error("The dead-letter topic could not be read in time."),
        },
    }, guarded=True),
    Route("GET", "/subscriptions", "subscriptions", {
        "tags": ["inspect"], "operationId": "subscriptions", "summary": "Topics and the handlers they feed",
        "responses": {"200": ok("Subscriptions.", {
            "type": "object", "required": ["subscriptions"],
            "properties": {"subscriptions": {"type": "array", "items": {
                "type": "object", "required": ["source", "sink"],
                "properties": {"source": {"type": "string", "example": "kafka://social-media-posts"},
                               "sink": {"type": "string", "example": "service://UserFeed/ProcessPost"}}}}}})},
    }),
    Route("GET", "/health", "health", {
        "tags": ["inspect"], "operationId": "health", "summary": "Readiness and load of this worker",
        "responses": {"200": ok("This worker's health.", {
            "type": "object", "required": ["ready", "live_partitions", "running", "pending"],
            "properties": {
                "ready": {"type": "boolean"},
                "live_partitions": {"type": "array", "items": {"type": "integer"}},
                "running": {"type": "integer"}, "pending": {"type": "integer"},
                "backlog": {"type": "integer"}, "sleeping": {"type": "integer"},
                "completed": {"type": "integer"}, "failed": {"type": "integer"},
                "applied_at_ack": {"type": "integer", "description":
                                   "Command records this worker wrote and applied at the broker's ack, "
                                   "before reading them back."},
            },
            "additionalProperties": {"type": "integer"}})},
    }),
    Route("GET", "/livez", "livez", {
        "tags": ["probe"], "operationId": "livez", "summary": "Liveness: the event loop turns, not fenced",
        "responses": {"200": ok("Live.", probe("live")),
                      "503": ok("Fenced by the stall watchdog (waiting for the group to reassign its partitions), or "
                                "the watchdog's tick is late: restart the worker if this lasts.", probe("live"))},
    }),
    Route("GET", "/readyz", "readyz", {
        "tags": ["probe"], "operationId": "readyz", "summary": "Readiness: every partition assigned here is driven",
        "responses": {"200": ok("Ready to serve.", probe("ready")),
                      "503": ok("Not ready: partitions being assigned, restored or activated; or fenced.",
                                probe("ready"))},
    }),
    Route("GET", "/metrics", "metrics", {
        "tags": ["observe"], "operationId": "metrics", "summary": "Prometheus metrics of this worker",
        "responses": {"200": {"description": "Prometheus text exposition format 0.0.4 (streamapp_ prefix).",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}},
    }),
    Route("GET", "/metrics/top-keys", "top_keys", {
        "tags": ["observe"], "operationId": "metrics.topKeys",
        "summary": "The keys with the most invocations queued, in the partitions this worker leads",
        "parameters": [param("n", "query", "How many keys.", {"type": "integer", "minimum": 1, "maximum": 1000,
                                                                "default": 10}, required=False)],
        "responses": {"200": ok("Longest queues first.", {
            "type": "object", "required": ["keys"],
            "properties": {"keys": {"type": "array", "items": {
                "type": "object", "required": ["service", "key", "partition", "queued"],
                "properties": {"service": {"type": "string"}, "key": {"type": "string"},
                               "partition": {"type": "integer"}, "queued": {"type": "integer"},
                               "inflight": {"type": "string", "nullable": True,
                                            "description": "The invocation the queue waits behind."}}}}}}),
                      "400": error("n is not a whole number from 1 to 1000.")},
    }, guarded=True),
    Route("GET", "/openapi.json", "openapi", {
        "tags": ["inspect"], "operationId": "openapi", "summary": "This document",
        "responses": {"200": ok("OpenAPI 3.0 document.", {"type": "object"})},
    }),
    # Handler routes: the view checks the method (405 with the allowed ones).
    Route("*", "/{service}/{key}/{handler}", "invoke", fallback=True),
    Route("POST", "/{service}/{key}/{handler}/send", "invoke", fallback=True, args=(("send", True),)),
)


# -- response models ------------------------------------------------------------------
MODELS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {
            "error": {"type": "string"},
            "invocationId": {"type": "string"},
            "allowed": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Accepted": {
        "type": "object", "required": ["invocationId", "status"],
        "properties": {"invocationId": {"type": "string"}, "status": {"type": "string", "enum": ["Accepted"]}},
    },
    "OperatorAction": {
        "type": "object", "required": ["invocationId", "action", "status"],
        "properties": {"invocationId": {"type": "string"},
                       "action": {"type": "string", "enum": ["resume", "kill", "cancel", "purge"]},
                       "status": {"type": "string", "enum": ["Accepted"]}},
    },
    "Invocation": {
        "type": "object",
        "required": ["id", "service", "handler", "key", "method", "status", "attempts", "created"],
        "properties": {
            "id": {"type": "string"}, "service": {"type": "string"}, "handler": {"type": "string"},
            "key": {"type": "string"}, "method": {"type": "string"},
            "status": {"type": "string", "enum": STATUSES},
            "attempts": {"type": "integer"},
            "wakeAt": {"type": "number", "nullable": True},
            "created": {"type": "number"},
            "finished": {"type": "number", "nullable": True,
                         "description": "When it finished; its outcome is kept STREAMAPP_RESULTS_RETENTION seconds."},
            "result": {"description": "The result of a completed invocation (any JSON)."},
            "error": {"type": "string", "nullable": True},
            "cancelRequested": {"type": "boolean",
                                "description": "Cancelled while a step was under way: it ends after that step."},
            "journal": {"type": "array", "items": {
                "type": "object", "properties": {"type": {"type": "string"}, "name": {"type": "string"}}}},
        },
    },
}

