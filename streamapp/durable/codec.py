"""JSON payloads in and out of handlers.

Handler inputs are declared with dataclasses of plain JSON types (str, int,
float, bool, None, list[...], dict[str, ...], nested dataclasses, ``X | None``).
``decode`` checks a parsed JSON value against such a type and raises
``InvalidInputError`` naming the offending field; ``to_json`` turns results
back into JSON-ready values.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from typing import Any, Union

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


def decode(value: Any, tp: Any, path: str = "value") -> Any:
    """Check ``value`` (parsed JSON) against ``tp`` and build it."""
    if tp is Any or (tp is None and value is None):
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return decode(value, option, path)
            except InvalidInputError as exc:
                errors.append(str(exc))
        raise InvalidInputError(errors[0] if len(errors) == 1 else f"{path}: no type matches ({'; '.join(errors)})")
    if tp is type(None):
        if value is not None:
            raise InvalidInputError(f"{path}: expected null, got {_kind(value)}")
        return None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _decode_dataclass(value, tp, path)
    if origin is list:
        if not isinstance(value, list):
            raise InvalidInputError(f"{path}: expected a list, got {_kind(value)}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [decode(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InvalidInputError(f"{path}: expected an object, got {_kind(value)}")
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {k: decode(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if tp in (list, dict):
        return decode(value, tp[Any] if tp is list else dict[str, Any], path)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer of hundreds of digits
                raise InvalidInputError(f"{path}: number out of range") from None
        raise InvalidInputError(f"{path}: expected a number, got {_kind(value)}")
    if tp in (str, int, bool):
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
