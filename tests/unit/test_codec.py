"""JSON payloads: parsing raw values and checking them against handler input types."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from streamapp.durable import InvalidInputError, codec


@dataclasses.dataclass
class Address:
    city: str
    zip: str | None = None


@dataclasses.dataclass
class Customer:
    name: str
    age: int
    address: Address
    tags: list[str] = dataclasses.field(default_factory=list)
    scores: dict[str, float] = dataclasses.field(default_factory=dict)


def nested(depth: int) -> str:
    """A JSON document whose innermost value sits ``depth`` arrays deep."""
    return "[" * depth + "1" + "]" * depth


# -- loads --------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b'{"a": [1, 2.5, null]}', '{"a": [1, 2.5, null]}'], ids=["bytes", "str"])
def test_loads__parses_json_bytes_and_text(raw: bytes | str) -> None:
    assert codec.loads(raw) == {"a": [1, 2.5, None]}


@pytest.mark.parametrize("raw", [None, b"", ""], ids=["none", "empty-bytes", "empty-str"])
def test_loads__empty_value_is_invalid_input(raw: bytes | str | None) -> None:
    with pytest.raises(InvalidInputError, match=r"^empty value: expected a JSON document$"):
        codec.loads(raw)


def test_loads__invalid_utf8_is_invalid_input_naming_the_byte() -> None:
    with pytest.raises(InvalidInputError, match=r"^value is not valid UTF-8: invalid start byte at byte 6$"):
        codec.loads(b'{"a": \xff}')


@pytest.mark.parametrize("raw", [b"{", b"{'a': 1}", b"[1,]", b"   ", b"NaN", b'{"a": Infinity}', b"[-Infinity]"])
def test_loads__invalid_json_is_invalid_input(raw: bytes) -> None:
    with pytest.raises(InvalidInputError, match=r"^value is not valid JSON: "):
        codec.loads(raw)


def test_loads__accepts_nesting_up_to_max_depth() -> None:
    assert codec.loads(nested(codec.MAX_DEPTH)) is not None
    assert codec.loads('{"a": ' * codec.MAX_DEPTH + "1" + "}" * codec.MAX_DEPTH) is not None


@pytest.mark.parametrize(
    "raw",
    [nested(codec.MAX_DEPTH + 1), '{"a": ' * (codec.MAX_DEPTH + 1) + "1" + "}" * (codec.MAX_DEPTH + 1)],
    ids=["arrays", "objects"],
)
def test_loads__nesting_beyond_max_depth_is_invalid_input(raw: str) -> None:
    with pytest.raises(InvalidInputError, match=rf"^JSON nested deeper than {codec.MAX_DEPTH} levels$"):
        codec.loads(raw)


def test_loads__nesting_that_overflows_the_parser_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match=r"^JSON nested too deeply$"):
        codec.loads(nested(200_000))


# -- decode -------------------------------------------------------------------


def test_decode__builds_nested_dataclasses() -> None:
    value = {"name": "Ada", "age": 36, "address": {"city": "London"}, "tags": ["x"], "scores": {"m": 1}}

    customer = codec.decode(value, Customer, "input")

    assert customer == Customer("Ada", 36, Address("London"), ["x"], {"m": 1.0})
    assert isinstance(customer.scores["m"], float)


def test_decode__ignores_unknown_fields_and_fills_defaults() -> None:
    value = {"name": "Ada", "age": 36, "address": {"city": "London", "planet": "Earth"}, "extra": 1}

    assert codec.decode(value, Customer, "input") == Customer("Ada", 36, Address("London"))


def _customer(**override: Any) -> dict[str, Any]:
    return {"name": "Ada", "age": 36, "address": {"city": "London"}, **override}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "input: expected an object, got a list"),
        (_customer(name=7), "input.name: expected a string, got a number"),
        (_customer(age=True), "input.age: expected an integer, got a boolean"),
        (_customer(age=1.5), "input.age: expected an integer, got a number"),
        (_customer(address={"city": None}), "input.address.city: expected a string, got null"),
        (_customer(address={}), "input.address: missing field 'city'"),
        ({"age": 1, "address": {"city": "x"}}, "input: missing field 'name'"),
        (_customer(tags=["a", 2]), r"input.tags\[1\]: expected a string, got a number"),
        (_customer(tags="a"), "input.tags: expected a list, got a string"),
        (_customer(scores={"alice": "high"}), "input.scores.alice: expected a number, got a string"),
        (_customer(scores={"bob": False}), "input.scores.bob: expected a number, got a boolean"),
        (_customer(scores=[]), "input.scores: expected an object, got a list"),
    ],
)
def test_decode__error_names_the_field_path(value: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=rf"^{message}$"):
        codec.decode(value, Customer, "input")


def test_decode__optional_accepts_null_and_the_type() -> None:
    assert codec.decode(None, str | None) is None
    assert codec.decode("x", str | None) == "x"
    assert codec.decode({"city": "Oslo", "zip": None}, Address) == Address("Oslo", None)


def test_decode__optional_mismatch_lists_every_option() -> None:
    with pytest.raises(InvalidInputError) as err:
        codec.decode({"city": 1}, Address | None, "input")

    assert str(err.value).startswith("input: no type matches (")
    assert "input.city: expected a string, got a number" in str(err.value)
    assert "input: expected null, got an object" in str(err.value)


def test_decode__bare_list_and_dict_and_any_accept_any_json() -> None:
    assert codec.decode([1, "a"], list) == [1, "a"]
    assert codec.decode({"a": [1]}, dict) == {"a": [1]}
    assert codec.decode({"a": [1]}, Any) == {"a": [1]}


def test_decode__int_is_accepted_as_float() -> None:
    assert codec.decode(3, float) == 3.0
    assert isinstance(codec.decode(3, float), float)


def test_decode__unsupported_type_is_a_programming_error_not_invalid_input() -> None:
    with pytest.raises(TypeError, match="unsupported type in handler signature"):
        codec.decode(1, complex)


# -- to_json / dumps ----------------------------------------------------------


def test_to_json__dataclasses_tuples_and_keys_become_json() -> None:
    value = {"customer": Customer("Ada", 36, Address("London")), 1: (1, 2)}

    assert codec.to_json(value) == {
        "customer": {"name": "Ada", "age": 36, "address": {"city": "London", "zip": None}, "tags": [], "scores": {}},
        "1": [1, 2],
    }


def test_to_json__rejects_values_that_are_not_json() -> None:
    with pytest.raises(TypeError, match=r"^result of type set is not JSON-serialisable$"):
        codec.to_json({"a": {1}})


def test_dumps__compact_utf8_json() -> None:
    assert codec.dumps({"a": [1, Address("Zürich")]}) == b'{"a":[1,{"city":"Z\\u00fcrich","zip":null}]}'
