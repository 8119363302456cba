"""OpenAPI 3.0 description of the HTTP ingress, built from the service registry.

The fixed views' operations come from the route table (``runtime.routes``).
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
from streamapp.runtime.routes import (
    DELAY_PATTERN,
    IDEMPOTENCY,
    INVOCATION_HEADER,
    JSON,
    KEY_PARAM,
    MODELS,
    MOVING,
    OPENAPI_VERSION,
    OWNER_GONE,
    ROUTES,
    TOO_LARGE,
    error,
    ok,
    param,
)

__all__ = ["SchemaBuilder", "document"]


def result_type(handler: Handler) -> Any:
    """The handler's declared return type, or Any when it cannot be resolved."""
    try:
        return typing.get_type_hints(handler.fn).get("return", Any)
    except (NameError, TypeError):
        return Any


def _body(builder: SchemaBuilder, handler: Handler) -> dict[str, Any] | None:
    if handler.input_type is None:
        # No input: an empty body, or any JSON document (ignored).
        return {"required": False, "content": {JSON: {"schema": {}}}}
    return {"required": True, "content": {JSON: {"schema": builder.schema(handler.input_type)}}}


def _handler_paths(builder: SchemaBuilder, handler: Handler) -> dict[str, Any]:
    base = f"/{handler.service}/{{key}}/{handler.name}"
    result = ok("The handler's result (JSON).", builder.schema(result_type(handler)))
    tag = [handler.service]
    if handler.kind == "shared":
        read = {
            "tags": tag,
            "summary": f"Read {handler.method} (shared: never waits behind the key's queue)",
            "parameters": [KEY_PARAM],
            "responses": {
                "200": result,
                "404": error("Unknown service or handler."),
                "413": TOO_LARGE,
                "503": MOVING,
                "504": OWNER_GONE,
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
            "200": {**result, "headers": {INVOCATION_HEADER: {
                "description": "The invocation's id.", "schema": {"type": "string"}}}},
            "400": error("The body is not JSON or does not match the handler's input, or the idempotency-key "
                          "is not UTF-8."),
            "404": error("Unknown service or handler, or the handler failed with a 404 TerminalError "
                          "(e.g. PackageTracker's \"package not found\")."),
            "413": TOO_LARGE,
            "500": error("The invocation failed terminally (TerminalError, or retries exhausted)."),
            "503": MOVING,
            "504": error("The invocation is still running after the call timeout (poll /invocations/{id}), or "
                          "the key's owner stopped answering mid-call (it died): retry with the same "
                          "idempotency-key."),
        },
    }
    send = {
        "tags": tag,
        "operationId": f"{handler.service}.{handler.name}.send",
        "summary": f"Enqueue {handler.method} without waiting",
        "parameters": [
            KEY_PARAM, IDEMPOTENCY,
            param("delay", "query", "Run no earlier than this from now: 10s, 500ms, 2m, 1h (plain number: seconds).",
                   {"type": "string", "pattern": DELAY_PATTERN}, required=False),
        ],
        "responses": {
            "202": ok("Accepted: the invocation is durable.", {"$ref": "#/components/schemas/Accepted"}),
            "400": error("The body is not JSON or does not match the handler's input, or the delay or "
                          "idempotency-key is malformed."),
            "404": error("Unknown service or handler."),
            "413": TOO_LARGE,
        },
    }
    body = _body(builder, handler)
    if body is not None:
        call["requestBody"] = send["requestBody"] = body
    return {base: {"post": call}, f"{base}/send": {"post": send}}


def document(registry: Registry, title: str = "streamapp ingress", version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.0 document for ``registry``'s handlers and the fixed views."""
    builder = SchemaBuilder()
    paths: dict[str, Any] = {}
    for service in sorted(registry.services.values(), key=lambda s: s.name):
        for handler in sorted(service.handlers.values(), key=lambda h: h.name):
            paths.update(_handler_paths(builder, handler))
    for route in ROUTES:
        if route.operation is None:
            continue  # a handler route: described once per handler, above
        paths.setdefault(route.path, {})[route.method.lower()] = route.describe(registry)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": "Durable per-key handlers over Apache Kafka. Errors are always JSON {\"error\": ...}.",
        },
        "paths": paths,
        "components": {
            "schemas": {**MODELS, **builder.components},
            "securitySchemes": {"operatorToken": {
                "type": "http", "scheme": "bearer",
                "description": "STREAMAPP_OPERATOR_TOKEN; required for operator actions and inspection "
                               "(state, invocations) when the server binds beyond loopback.",
            }},
        },
    }
