"""Invocation ids: deterministic for the same coordinates, different otherwise."""

from __future__ import annotations

import re

import pytest

from streamapp.durable import ids

ID = re.compile(r"^inv_[a-z2-7]{26}$")

TOPIC_ID = "8f511700-d7c0-4a21-8a54-3584af334851"
RECORD = ("app", "posts", TOPIC_ID, 3, 1200)
HTTP = ("app", "PackageTracker/RegisterPackage", "pkg-1", "req-1")


def test_for_record__same_coordinates_give_the_same_id() -> None:
    assert ids.for_record(*RECORD) == ids.for_record(*RECORD)
    assert ID.match(ids.for_record(*RECORD))


@pytest.mark.parametrize(
    "other",
    [
        ("app2", "posts", TOPIC_ID, 3, 1200),
        ("app", "posts2", TOPIC_ID, 3, 1200),
        ("app", "posts", "0a9e61ac-90fd-435b-baa3-b1a3f03d4d47", 3, 1200),
        ("app", "posts", TOPIC_ID, 4, 1200),
        ("app", "posts", TOPIC_ID, 3, 1201),
    ],
    ids=["app", "topic", "topic-id", "partition", "offset"],
)
def test_for_record__any_other_coordinate_gives_another_id(other: tuple[str, str, str, int, int]) -> None:
    assert ids.for_record(*other) != ids.for_record(*RECORD)


def test_for_record__recreated_topic_gives_new_ids_for_reused_offsets() -> None:
    # Same name, partition and offset: only the incarnation (topic id) differs.
    first = {ids.for_record("app", "posts", TOPIC_ID, 0, offset) for offset in range(100)}
    second = {ids.for_record("app", "posts", "0a9e61ac-90fd-435b-baa3-b1a3f03d4d47", 0, offset)
              for offset in range(100)}
    assert len(first) == len(second) == 100
    assert not first & second


def test_for_idempotency_key__same_request_gives_the_same_id() -> None:
    assert ids.for_idempotency_key(*HTTP) == ids.for_idempotency_key(*HTTP)
    assert ID.match(ids.for_idempotency_key(*HTTP))


@pytest.mark.parametrize(
    "other",
    [
        ("app2", "PackageTracker/RegisterPackage", "pkg-1", "req-1"),
        ("app", "PackageTracker/UpdateLocation", "pkg-1", "req-1"),
        ("app", "PackageTracker/RegisterPackage", "pkg-2", "req-1"),
        ("app", "PackageTracker/RegisterPackage", "pkg-1", "req-2"),
    ],
    ids=["app", "method", "key", "idempotency-key"],
)
def test_for_idempotency_key__any_other_part_gives_another_id(other: tuple[str, str, str, str]) -> None:
    assert ids.for_idempotency_key(*other) != ids.for_idempotency_key(*HTTP)


def test_for_idempotency_key__separator_inside_a_part_does_not_collide() -> None:
    # Key "a:b" with idempotency key "c" is another request than key "a" with "b:c".
    method = "PackageTracker/RegisterPackage"
    assert ids.for_idempotency_key("app", method, "a:b", "c") != ids.for_idempotency_key("app", method, "a", "b:c")


def test_ids__kafka_and_http_ids_live_in_separate_namespaces() -> None:
    assert ids.for_record("app", "t", TOPIC_ID, 0, 0) != ids.for_idempotency_key("app", "t", "0", "0")


def test_random_id__is_well_formed_and_unique() -> None:
    many = {ids.random_id() for _ in range(1000)}
    assert len(many) == 1000
    assert all(ID.match(i) for i in many)
