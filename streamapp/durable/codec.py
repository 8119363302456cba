"""JSON payloads in and out of handlers.

Handler inputs are declared with dataclasses of plain JSON types (str, int,
float, bool, None, list[...], dict[str, ...], nested dataclasses, ``X | None``).
``decode`` checks a parsed JSON value against such a type and raises
``InvalidInputError`` naming the offending field; ``SchemaBuilder`` describes
the same type as an OpenAPI 3.0 schema (both follow ``shape``, the one reading
of a type); ``to_json`` turns results back into JSON-ready values.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from typing import Any, Literal, Union

import orjson

from streamapp.durable.errors import InvalidInputError

MAX_DEPTH = 64
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def loads(raw: bytes | str | None) -> Any:
    """Parse a JSON document; raise InvalidInputError with the reason."""
    if raw is None or raw == b"" or raw == "":
        raise InvalidInputError("empty value: expected a JSON document")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"value is not valid UTF-8: {exc.reason} at byte {exc.start}") from exc
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_int64)
    except RecursionError as exc:
        raise InvalidInputError("JSON nested too deeply") from exc
    except ValueError as exc:
        raise InvalidInputError(f"value is not valid JSON: {exc}") from exc
    if _depth(value) > MAX_DEPTH:
        raise InvalidInputError(f"JSON nested deeper than {MAX_DEPTH} levels")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _finite_float(text: str) -> float:
    # 1e400 parses to inf, which json.dumps writes back as the non-JSON "Infinity".
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _int64(text: str) -> int:
    # The tables' JSON codec (orjson) cannot store integers beyond 64 bits.
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"integer {text[:40]}{'...' if len(text) > 40 else ''} is out of range (64 bits)")
    return value


def _storable(*texts: str) -> None:
    for text in texts:
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:  # "\ud800": valid JSON, but no UTF-8 can carry it
                raise InvalidInputError(f"value has a lone UTF-16 surrogate ({exc.object[exc.start]!r})") from None


def _depth(value: Any) -> int:
    """How deep ``value`` nests (stops counting past MAX_DEPTH); rejects strings that cannot be stored."""
    depth, level = 0, [value]
    while level:
        depth += 1
        # ``level`` holds values nested ``depth - 1`` levels deep.
        if depth - 1 > MAX_DEPTH:
            return depth - 1
        nxt: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                _storable(*item)
                nxt.extend(item.values())
            elif isinstance(item, list):
                nxt.extend(item)
            elif isinstance(item, str):
                _storable(item)
        level = nxt
    return depth - 1


# -- the one reading of a handler type --------------------------------------
# ``shape`` says what a type means as JSON; ``decode`` (checks a value) and
# ``SchemaBuilder`` (describes it in OpenAPI 3.0) both follow it, so what the
# document promises is what the codec accepts.
Kind = Literal["any", "null", "union", "object", "list", "dict", "str", "int", "float", "bool", "unsupported"]
_SCALARS: dict[Any, Kind] = {str: "str", int: "int", float: "float", bool: "bool"}


def shape(tp: Any) -> tuple[Kind, tuple[Any, ...]]:
    """``tp`` as JSON: its kind and what the kind needs (union options, item or value type)."""
    if tp is Any:
        return "any", ()
    if tp is None or tp is type(None):
        return "null", ()
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return "union", typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return "object", (tp,)
    if origin is list or tp is list:
        return "list", typing.get_args(tp) or (Any,)
    if origin is dict or tp is dict:
        return "dict", (typing.get_args(tp) or (str, Any))[1:]
    if tp in _SCALARS:
        return _SCALARS[tp], ()
    return "unsupported", ()


def decode(value: Any, tp: Any, path: str = "value") -> Any:
    """Check ``value`` (parsed JSON) against ``tp`` and build it."""
    kind, args = shape(tp)
    if kind == "any":
        return value
    if kind == "union":
        errors = []
        for option in args:
            try:
                return decode(value, option, path)
            except InvalidInputError as exc:
                errors.append(str(exc))
        raise InvalidInputError(errors[0] if len(errors) == 1 else f"{path}: no type matches ({'; '.join(errors)})")
    if kind == "null":
        if value is not None:
            raise InvalidInputError(f"{path}: expected null, got {_kind(value)}")
        return None
    if kind == "object":
        return _decode_dataclass(value, args[0], path)
    if kind == "list":
        if not isinstance(value, list):
            raise InvalidInputError(f"{path}: expected a list, got {_kind(value)}")
        return [decode(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if kind == "dict":
        if not isinstance(value, dict):
            raise InvalidInputError(f"{path}: expected an object, got {_kind(value)}")
        return {k: decode(v, args[0], f"{path}.{k}") for k, v in value.items()}
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer of hundreds of digits
                raise InvalidInputError(f"{path}: number out of range") from None
        raise InvalidInputError(f"{path}: expected a number, got {_kind(value)}")
    if kind in ("str", "int", "bool"):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise InvalidInputError(f"{path}: expected {_NAMES[tp]}, got {_kind(value)}")
    raise TypeError(f"unsupported type in handler signature: {tp!r}")


_NAMES = {str: "a string", int: "an integer", bool: "a boolean"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


@functools.cache
def _fields(tp: type) -> tuple[tuple[dataclasses.Field[Any], Any], ...]:
    hints = typing.get_type_hints(tp)
    return tuple((field, hints[field.name]) for field in dataclasses.fields(tp))


def _decode_dataclass(value: Any, tp: type, path: str) -> Any:
    if not isinstance(value, dict):
        raise InvalidInputError(f"{path}: expected an object, got {_kind(value)}")
    kwargs: dict[str, Any] = {}
    for field, field_tp in _fields(tp):
        if field.name in value:
            kwargs[field.name] = decode(value[field.name], field_tp, f"{path}.{field.name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise InvalidInputError(f"{path}: missing field '{field.name}'")
    return tp(**kwargs)


NULL_SCHEMA: dict[str, Any] = {"nullable": True, "enum": [None]}
_SCHEMA_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}


class SchemaBuilder:
    """OpenAPI 3.0 schemas of handler types, read as ``decode`` reads them (``shape``).

    Dataclasses become named components (``#/components/schemas/Name``), so
    nested and recursive dataclasses are described once. A type ``decode``
    does not support is described as any JSON value.
    """

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}
        self._names: dict[type, str] = {}

    def schema(self, tp: Any) -> dict[str, Any]:
        kind, args = shape(tp)
        if kind == "null":
            return dict(NULL_SCHEMA)
        if kind == "union":
            return self._union(args)
        if kind == "object":
            return {"$ref": f"#/components/schemas/{self._component(args[0])}"}
        if kind == "list":
            return {"type": "array", "items": self.schema(args[0])}
        if kind == "dict":
            return {"type": "object", "additionalProperties": self.schema(args[0]) or True}
        if kind in _SCHEMA_TYPES:
            return {"type": _SCHEMA_TYPES[kind]}
        return {}  # "any", and what decode refuses to read

    def _union(self, args: tuple[Any, ...]) -> dict[str, Any]:
        options = [a for a in args if a is not type(None)]
        nullable = len(options) < len(args)
        inner = self.schema(options[0]) if len(options) == 1 else {"anyOf": [self.schema(a) for a in options]}
        if not nullable:
            return inner
        if not inner:
            return {}
        if "$ref" in inner or "anyOf" in inner:
            # A $ref takes no siblings in OpenAPI 3.0, and ``nullable`` only
            # widens a ``type``: spell null out as one more option.
            return {"anyOf": [*inner.get("anyOf", [inner]), NULL_SCHEMA]}
        return {**inner, "nullable": True}

    def _component(self, tp: type) -> str:
        if tp in self._names:
            return self._names[tp]
        name = tp.__name__
        n = 2
        while name in self.components:
            name, n = f"{tp.__name__}{n}", n + 1
        self._names[tp] = name
        self.components[name] = {}  # placeholder: recursion refers to the name
        fields = _fields(tp)
        required = [f.name for f, _ in fields
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        body: dict[str, Any] = {"type": "object", "properties": {f.name: self.schema(ftp) for f, ftp in fields}}
        if required:
            body["required"] = required
        if tp.__doc__ and not tp.__doc__.startswith(f"{tp.__name__}("):
            body["description"] = tp.__doc__.strip()
        self.components[name] = body
        return name


def to_json(value: Any) -> Any:
    """Turn a handler result into JSON-ready data (dataclasses become objects)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_json(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"result of type {type(value).__name__} is not JSON-serialisable")


def storable(value: Any) -> Any:
    """A copy of ``value`` as the tables will store it; ValueError if they cannot.

    Tables are written with orjson, which refuses integers beyond 64 bits and
    lone surrogates; NaN and infinities are not JSON at all.
    """
    try:
        normal = json.loads(json.dumps(value, allow_nan=False))  # tuples -> lists, int keys -> str
        orjson.dumps(normal)
    except (TypeError, ValueError, orjson.JSONEncodeError) as exc:
        raise ValueError(str(exc)) from None
    return normal


def dumps(value: Any) -> bytes:
    return json.dumps(to_json(value), separators=(",", ":")).encode()
