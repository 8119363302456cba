"""The OpenAPI document of the ingress: valid OpenAPI 3.0, every handler present, schemas match the codec."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from streamapp.config import Settings
from streamapp.durable import InvalidInputError, ObjectContext, Registry, Service, SharedContext
from streamapp.runtime import openapi
from streamapp.services import registry as seed_registry
from tests.support.services import services as test_services


def full_registry() -> Registry:
    reg = seed_registry(Settings())
    for svc in test_services:
        reg.add(svc)
    return reg


def conforms(doc: dict[str, Any], schema: dict[str, Any], value: Any) -> bool:
    root = {**schema, "components": doc["components"]}  # so "#/components/..." resolves
    return bool(OAS30Validator(root).is_valid(value))


def test_document__is_valid_openapi_3_0() -> None:
    doc = openapi.document(full_registry())
    validate(doc)  # raises on any structural error
    assert doc["openapi"].startswith("3.0.")


def test_document__every_registered_handler_has_its_paths_and_methods() -> None:
    reg = full_registry()
    paths = openapi.document(reg)["paths"]
    for svc in reg.services.values():
        for handler in svc.handlers.values():
            base = f"/{svc.name}/{{key}}/{handler.name}"
            if handler.kind == "shared":
                assert set(paths[base]) == {"get", "post"}, base
                assert f"{base}/send" not in paths, "shared handlers cannot be sent to"
            else:
                assert set(paths[base]) == {"post"}, base
                assert set(paths[f"{base}/send"]) == {"post"}, base
    handler_paths = {p for p in paths if p.count("/") >= 3 and not p.startswith(("/invocations", "/state"))}
    assert len(handler_paths) == sum(
        1 if h.kind == "shared" else 2 for s in reg.services.values() for h in s.handlers.values()
    )


def test_document__fixed_views_and_their_documented_responses() -> None:
    paths = openapi.document(full_registry())["paths"]
    expected = {
        ("/invocations", "get"): {"200", "400", "401", "403"},
        ("/invocations/{id}", "get"): {"200", "401", "403", "404", "503", "504"},
        ("/invocations/{id}/resume", "post"): {"202", "401", "403", "404", "409", "503", "504"},
        ("/invocations/{id}/kill", "post"): {"202", "401", "403", "404", "409", "503", "504"},
        ("/invocations/{id}/cancel", "post"): {"202", "401", "403", "404", "409", "503", "504"},
        ("/invocations/{id}/purge", "post"): {"202", "401", "403", "404", "409", "503", "504"},
        ("/invocations/bulk/{action}", "post"): {"202", "400", "401", "403", "404"},
        ("/state/{service}/{key}", "get"): {"200", "401", "403", "404", "503", "504"},
        ("/subscriptions", "get"): {"200"},
        ("/health", "get"): {"200"},
        ("/openapi.json", "get"): {"200"},
    }
    for (path, method), codes in expected.items():
        assert set(paths[path][method]["responses"]) == codes, path
    call = paths["/PackageTracker/{key}/UpdateLocation"]["post"]["responses"]
    assert {"200", "400", "404", "413", "500", "503", "504"} <= set(call)
    send = paths["/PackageTracker/{key}/UpdateLocation/send"]["post"]
    assert set(send["responses"]) == {"202", "400", "404", "413"}
    assert [p["name"] for p in send["parameters"]] == ["key", "idempotency-key", "delay"]
    services = paths["/state/{service}/{key}"]["get"]["parameters"][0]["schema"]["enum"]
    assert services == sorted(full_registry().services) and {"PackageTracker", "UserFeed"} <= set(services)


def body_schema(doc: dict[str, Any], path: str) -> dict[str, Any]:
    return doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("path", "method", "value"), [
    ("/PackageTracker/{key}/UpdateLocation", "UpdateLocation", {"timestamp": "t", "location": "l"}),
    ("/PackageTracker/{key}/UpdateLocation", "UpdateLocation", {"timestamp": "t", "location": "l", "extra": 1}),
    ("/PackageTracker/{key}/UpdateLocation", "UpdateLocation", {"timestamp": 1, "location": "l"}),
    ("/PackageTracker/{key}/UpdateLocation", "UpdateLocation", {"location": "l"}),
    ("/PackageTracker/{key}/UpdateLocation", "UpdateLocation", []),
    ("/PackageTracker/{key}/UpdateLocation", "UpdateLocation", None),
    ("/PackageTracker/{key}/RegisterPackage", "RegisterPackage", {"finalDestination": "x"}),
    ("/PackageTracker/{key}/RegisterPackage", "RegisterPackage", {"finalDestination": None}),
    ("/UserFeed/{key}/ProcessPost", "ProcessPost", {"content": "c", "metadata": "m"}),
    ("/UserFeed/{key}/ProcessPost", "ProcessPost", {"content": "c"}),
    ("/Test/{key}/Nap", "Nap", {"tag": "a"}),
    ("/Test/{key}/Nap", "Nap", {"tag": "a", "seconds": 1, "work": 0.5}),
    ("/Test/{key}/Nap", "Nap", {"tag": "a", "seconds": "1"}),
    ("/Test/{key}/Nap", "Nap", {"tag": "a", "seconds": True}),
    ("/Test/{key}/Tick", "Tick", {"n": 3}),
    ("/Test/{key}/Tick", "Tick", {"n": 3.5}),
    ("/Test/{key}/Tick", "Tick", {"n": False}),
])
def test_input_schema__accepts_exactly_what_the_codec_accepts(path: str, method: str, value: Any) -> None:
    reg = full_registry()
    doc = openapi.document(reg)
    handler = reg.lookup(path.split("/")[1], method)
    assert handler is not None
    try:
        handler.decode_input(value)
        accepted = True
    except InvalidInputError:
        accepted = False
    assert conforms(doc, body_schema(doc, path), value) == accepted, (path, value)


@dataclasses.dataclass
class Leaf:
    n: int
    tags: list[str]
    extra: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Tree:
    """A recursive input."""

    name: str
    leaf: Leaf | None
    children: list[Tree]
    either: int | str = 0


def test_schema_builder__nested_optional_and_recursive_dataclasses() -> None:
    svc = Service("Shapes")

    @svc.handler()
    async def Grow(ctx: ObjectContext, tree: Tree) -> Leaf:
        raise NotImplementedError

    @svc.handler()
    async def Poke(ctx: ObjectContext) -> None:
        raise NotImplementedError

    @svc.handler(kind="shared")
    async def Peek(ctx: SharedContext) -> list[int]:
        raise NotImplementedError

    doc = openapi.document(Registry([svc]))
    validate(doc)
    schemas = doc["components"]["schemas"]
    assert schemas["Tree"]["required"] == ["name", "leaf", "children"]
    assert schemas["Tree"]["description"] == "A recursive input."
    children = schemas["Tree"]["properties"]["children"]
    assert children == {"type": "array", "items": {"$ref": "#/components/schemas/Tree"}}
    grow = body_schema(doc, "/Shapes/{key}/Grow")
    good = {"name": "root", "leaf": None, "children": [
        {"name": "kid", "leaf": {"n": 1, "tags": ["a"], "extra": {"x": 1.5}}, "children": [], "either": "s"}]}
    assert conforms(doc, grow, good)
    assert not conforms(doc, grow, {**good, "either": 1.5})
    assert not conforms(doc, grow, {**good, "children": [{"name": "kid"}]})
    result = doc["paths"]["/Shapes/{key}/Grow"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert result == {"$ref": "#/components/schemas/Leaf"}
    poke = doc["paths"]["/Shapes/{key}/Poke"]["post"]
    assert poke["requestBody"]["required"] is False
    assert conforms(doc, poke["responses"]["200"]["content"]["application/json"]["schema"], None)
    peek = doc["paths"]["/Shapes/{key}/Peek"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert peek == {"type": "array", "items": {"type": "integer"}}


def test_result_schema__seed_read_handler_allows_null_and_objects() -> None:
    doc = openapi.document(full_registry())
    get = doc["paths"]["/PackageTracker/{key}/getPackageInfo"]["get"]["responses"]["200"]
    schema = get["content"]["application/json"]["schema"]
    assert conforms(doc, schema, None)
    assert conforms(doc, schema, {"finalDestination": "x", "locations": []})
    assert not conforms(doc, schema, [1])
