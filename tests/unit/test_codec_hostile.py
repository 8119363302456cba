"""The codec refuses JSON that parses but cannot be stored or written back as JSON.

Faust's table codec (orjson) refuses integers beyond 64 bits and strings
with lone surrogates, and Python writes an overflowed float back as the
non-JSON ``Infinity`` (orjson silently as ``null``). Such values used to
pass ``codec.loads`` and crash the invocations agent when the invocation
record was saved.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from streamapp.durable import InvalidInputError, codec


@pytest.mark.parametrize(("raw", "reason"), [
    (b"1e400", "number 1e400 is out of range"),
    (b'{"seconds": -1e400}', "number -1e400 is out of range"),
    (b"9223372036854775808", "out of range (64 bits)"),
    (b"[-9223372036854775809]", "out of range (64 bits)"),
    (b'{"n": 123456789012345678901234567890}', "out of range (64 bits)"),
    (b'"\\ud800"', "lone UTF-16 surrogate"),
    (b'{"a": ["x", "\\udfff"]}', "lone UTF-16 surrogate"),
    (b'{"\\udc00": 1}', "lone UTF-16 surrogate"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
])
def test_loads__rejects_values_the_tables_cannot_store(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        codec.loads(raw)


@pytest.mark.parametrize("raw", [
    b"9223372036854775807", b"-9223372036854775808", b"1.7976931348623157e308", b"-0.0", b"1e-400",
    b'"\\ud83d\\ude00"', '"caf\u00e9 \u65e5\u672c"'.encode(), b'{"\\u0000": "\\u0000"}',
])
def test_loads__accepts_edge_values_that_round_trip(raw: bytes) -> None:
    value = codec.loads(raw)
    assert json.loads(json.dumps(value, allow_nan=False)) == value
    if importlib.util.find_spec("orjson") is not None:  # Faust's table codec when it is installed
        import orjson

        assert orjson.loads(orjson.dumps(value)) == value


def test_decode__an_integer_too_large_for_a_float_is_invalid_input_not_an_overflow() -> None:
    with pytest.raises(InvalidInputError, match=r"^value.seconds: number out of range$"):
        codec.decode({"seconds": 10**400}, dict[str, float])
