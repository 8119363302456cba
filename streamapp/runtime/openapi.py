"""OpenAPI 3.0 description of the HTTP ingress, built from the service registry.

Every registered handler gets its own paths (``/{Service}/{key}/{handler}``
with the service and handler spelled out), so the document says exactly
which calls a worker accepts. Handler inputs are dataclasses of plain JSON
types (see ``streamapp.durable.codec``); each becomes a JSON Schema under
``components/schemas``, read by ``codec.SchemaBuilder`` as the codec reads
them. Served at ``GET /openapi.json``.

    exclusive handler   POST /{S}/{key}/{h}        call: 200 + result
                        POST /{S}/{key}/{h}/send   send: 202 {"invocationId"}
    shared handler      GET|POST /{S}/{key}/{h}    read-only call: 200 + result
    inspection          /invocations, /invocations/{id}, /state/{S}/{key}
                        (bearer token beyond loopback),
                        /subscriptions, /health, /openapi.json
    operator            POST /invocations/{id}/resume|kill (bearer token
                        beyond loopback)
"""

from __future__ import annotations

import typing
from typing import Any

from streamapp.durable.codec import SchemaBuilder
from streamapp.durable.service import Handler, Registry

__all__ = ["SchemaBuilder", "document"]

OPENAPI_VERSION = "3.0.3"
JSON = "application/json"
# What a path parameter ``{key}`` matches in the aiohttp router: no ``/``.
KEY_PATTERN = r"^[^/]+$"
DELAY_PATTERN = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)?\s*$"
STATUSES = ["pending", "running", "scheduled", "sleeping", "retrying", "paused", "completed", "failed"]


def result_type(handler: Handler) -> Any:
    """The handler's declared return type, or Any when it cannot be resolved."""
    try:
        return typing.get_type_hints(handler.fn).get("return", Any)
    except (NameError, TypeError):
        return Any


# -- building blocks ---------------------------------------------------------------
def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def _param(name: str, where: str, description: str, schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "description": description, "schema": schema}


KEY_PARAM = _param("key", "path", "The object's key: one actor per (service, key).",
                   {"type": "string", "minLength": 1, "pattern": KEY_PATTERN})
MOVING = _error("No worker owns the key's partition yet, or the key moved while the call waited: retry.")
TOO_LARGE = _error("The body is larger than STREAMAPP_MAX_BODY_BYTES.")
IDEMPOTENCY = _param("idempotency-key", "header", "Deduplicates: the same key returns the same invocation.",
                     {"type": "string"}, required=False)


def _body(builder: SchemaBuilder, handler: Handler) -> dict[str, Any] | None:
    if handler.input_type is None:
        # No input: an empty body, or any JSON document (ignored).
        return {"required": False, "content": {JSON: {"schema": {}}}}
    return {"required": True, "content": {JSON: {"schema": builder.schema(handler.input_type)}}}


def _handler_paths(builder: SchemaBuilder, handler: Handler) -> dict[str, Any]:
    base = f"/{handler.service}/{{key}}/{handler.name}"
    result = _ok("The handler's result (JSON).", builder.schema(result_type(handler)))
    tag = [handler.service]
    if handler.kind == "shared":
        read = {
            "tags": tag,
            "summary": f"Read {handler.method} (shared: never waits behind the key's queue)",
            "parameters": [KEY_PARAM],
            "responses": {
                "200": result,
                "404": _error("Unknown service or handler."),
                "413": TOO_LARGE,
                "503": MOVING,
            },
        }
        return {base: {
            "get": {**read, "operationId": f"{handler.service}.{handler.name}.get"},
            "post": {**read, "operationId": f"{handler.service}.{handler.name}"},
        }}
    call = {
        "tags": tag,
        "operationId": f"{handler.service}.{handler.name}",
        "summary": f"Call {handler.method} and wait for its result",
        "parameters": [KEY_PARAM, IDEMPOTENCY],
        "responses": {
            "200": {**result, "headers": {"x-streamapp-invocation-id": {
                "description": "The invocation's id.", "schema": {"type": "string"}}}},
            "400": _error("The body is not JSON or does not match the handler's input, or the idempotency-key "
                          "is not UTF-8."),
            "404": _error("Unknown service or handler, or the handler failed with a 404 TerminalError "
                          "(e.g. PackageTracker's \"package not found\")."),
            "413": TOO_LARGE,
            "500": _error("The invocation failed terminally (TerminalError, or retries exhausted)."),
            "503": MOVING,
            "504": _error("The invocation is still running after the call timeout; poll /invocations/{id}."),
        },
    }
    send = {
        "tags": tag,
        "operationId": f"{handler.service}.{handler.name}.send",
        "summary": f"Enqueue {handler.method} without waiting",
        "parameters": [
            KEY_PARAM, IDEMPOTENCY,
            _param("delay", "query", "Run no earlier than this from now: 10s, 500ms, 2m, 1h (plain number: seconds).",
                   {"type": "string", "pattern": DELAY_PATTERN}, required=False),
        ],
        "responses": {
            "202": _ok("Accepted: the invocation is durable.", {"$ref": "#/components/schemas/Accepted"}),
            "400": _error("The body is not JSON or does not match the handler's input, or the delay or "
                          "idempotency-key is malformed."),
            "404": _error("Unknown service or handler."),
            "413": TOO_LARGE,
        },
    }
    body = _body(builder, handler)
    if body is not None:
        call["requestBody"] = send["requestBody"] = body
    return {base: {"post": call}, f"{base}/send": {"post": send}}


def _static_paths(registry: Registry) -> dict[str, Any]:
    inv_id = _param("id", "path", "An invocation id (inv_...).", {"type": "string", "minLength": 1,
                                                                   "pattern": KEY_PATTERN})
    service = _param("service", "path", "A registered service.", {"type": "string", "enum": sorted(registry.services)})
    # Beyond loopback a token is required; on loopback none is needed.
    guarded: dict[str, Any] = {"security": [{}, {"operatorToken": []}]}
    refused = {
        "401": _error("The server has an operator token and the request does not carry it."),
        "403": _error("The server listens beyond loopback and has no operator token: these views are off."),
    }
    unreachable = _error("Not held by this worker, and a peer did not answer in time; retry.")
    operate = {
        "tags": ["operate"],
        "parameters": [inv_id],
        **guarded,
        "responses": {
            "202": _ok("Accepted: the action is durable.", {"$ref": "#/components/schemas/OperatorAction"}),
            **refused,
            "404": _error("Unknown invocation."),
            "504": unreachable,
        },
    }
    return {
        "/invocations": {"get": {
            "tags": ["inspect"], "operationId": "invocations.list",
            "summary": "Unfinished invocations of every worker", **guarded,
            "responses": {"200": _ok("Unfinished invocations, oldest first.", {
                "type": "object", "required": ["invocations"],
                "properties": {"invocations": {"type": "array",
                                               "items": {"$ref": "#/components/schemas/Invocation"}},
                               "unreachable": {"type": "array", "items": {"type": "string"},
                                               "description": "Peers that did not answer in time."}}}),
                          **refused},
        }},
        "/invocations/{id}": {"get": {
            "tags": ["inspect"], "operationId": "invocations.get",
            "summary": "An invocation's status, result or error, and journal",
            "parameters": [inv_id], **guarded,
            "responses": {"200": _ok("The invocation.", {"$ref": "#/components/schemas/Invocation"}),
                          **refused, "404": _error("Unknown invocation."), "504": unreachable},
        }},
        "/invocations/{id}/resume": {"post": {
            **operate, "operationId": "invocations.resume", "summary": "Run a paused invocation again"}},
        "/invocations/{id}/kill": {"post": {
            **operate, "operationId": "invocations.kill", "summary": "Fail an invocation; its key moves on"}},
        "/state/{service}/{key}": {"get": {
            "tags": ["inspect"], "operationId": "state.get", "summary": "A key's state (streamapp kv get)",
            "parameters": [service, KEY_PARAM], **guarded,
            "responses": {
                **refused,
                "200": _ok("The key's state (empty when it has none).", {
                    "type": "object", "required": ["service", "key", "state"],
                    "properties": {"service": {"type": "string"}, "key": {"type": "string"},
                                   "state": {"type": "object", "additionalProperties": True}}}),
                "404": _error("Unknown service."),
                "503": MOVING,
            },
        }},
        "/subscriptions": {"get": {
            "tags": ["inspect"], "operationId": "subscriptions", "summary": "Topics and the handlers they feed",
            "responses": {"200": _ok("Subscriptions.", {
                "type": "object", "required": ["subscriptions"],
                "properties": {"subscriptions": {"type": "array", "items": {
                    "type": "object", "required": ["source", "sink"],
                    "properties": {"source": {"type": "string", "example": "kafka://social-media-posts"},
                                   "sink": {"type": "string", "example": "service://UserFeed/ProcessPost"}}}}}})},
        }},
        "/health": {"get": {
            "tags": ["inspect"], "operationId": "health", "summary": "Readiness and load of this worker",
            "responses": {"200": _ok("This worker's health.", {
                "type": "object", "required": ["ready", "live_partitions", "running", "pending"],
                "properties": {
                    "ready": {"type": "boolean"},
                    "live_partitions": {"type": "array", "items": {"type": "integer"}},
                    "running": {"type": "integer"}, "pending": {"type": "integer"},
                    "backlog": {"type": "integer"}, "sleeping": {"type": "integer"},
                    "completed": {"type": "integer"}, "failed": {"type": "integer"},
                },
                "additionalProperties": {"type": "integer"}})},
        }},
        "/openapi.json": {"get": {
            "tags": ["inspect"], "operationId": "openapi", "summary": "This document",
            "responses": {"200": _ok("OpenAPI 3.0 document.", {"type": "object"})},
        }},
    }


_COMMON = {
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
        "properties": {"invocationId": {"type": "string"}, "action": {"type": "string", "enum": ["resume", "kill"]},
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
            "journal": {"type": "array", "items": {
                "type": "object", "properties": {"type": {"type": "string"}, "name": {"type": "string"}}}},
        },
    },
}


def document(registry: Registry, title: str = "streamapp ingress", version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.0 document for ``registry``'s handlers and the fixed views."""
    builder = SchemaBuilder()
    paths: dict[str, Any] = {}
    for service in sorted(registry.services.values(), key=lambda s: s.name):
        for handler in sorted(service.handlers.values(), key=lambda h: h.name):
            paths.update(_handler_paths(builder, handler))
    paths.update(_static_paths(registry))
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": "Durable per-key handlers over Apache Kafka. Errors are always JSON {\"error\": ...}.",
        },
        "paths": paths,
        "components": {
            "schemas": {**_COMMON, **builder.components},
            "securitySchemes": {"operatorToken": {
                "type": "http", "scheme": "bearer",
                "description": "STREAMAPP_OPERATOR_TOKEN; required for operator actions and inspection "
                               "(state, invocations) when the server binds beyond loopback.",
            }},
        },
    }
