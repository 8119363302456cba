"""Metadata v10+ requests for topic ids: version negotiation, wire layout, answers.

The exchange with a real broker is exercised by tests/integration/test_topic_recreate.py.
"""

from __future__ import annotations

from io import BytesIO
from types import SimpleNamespace

import pytest
from aiokafka.errors import UnknownTopicOrPartitionError, UnsupportedVersionError

from streamapp.runtime import topic_ids
from streamapp.runtime.topic_ids import ZERO, TopicIdsRequest

TOPIC_ID = "8f511700-d7c0-4a21-8a54-3584af334851"


@pytest.mark.parametrize(("offered", "chosen"), [((0, 13), 13), ((0, 10), 10), ((1, 12), 12), ((0, 17), 13)])
def test_request__takes_the_highest_version_with_topic_ids_both_sides_know(offered: tuple[int, int],
                                                                           chosen: int) -> None:
    assert TopicIdsRequest(["t"]).prepare({3: offered}).API_VERSION == chosen


@pytest.mark.parametrize("versions", [{3: (0, 9)}, {}], ids=["metadata-v9", "unknown"])
def test_request__broker_without_topic_ids_is_refused(versions: dict[int, tuple[int, int]]) -> None:
    with pytest.raises(UnsupportedVersionError):
        TopicIdsRequest(["t"]).prepare(versions)


def test_request__v13_body_has_kafkas_flexible_layout() -> None:
    body = TopicIdsRequest(["ab"]).prepare({3: (0, 13)}).encode()
    # topics: compact array of 1 (varint 2): zero uuid, compact string "ab" (varint 3), no tags;
    # allow_auto_topic_creation false, include_topic_authorized_operations false, no tags.
    assert body == b"\x02" + bytes(16) + b"\x03ab" + b"\x00" + b"\x00" + b"\x00" + b"\x00"


def test_uuid__sixteen_bytes_most_significant_first() -> None:
    raw = topic_ids.Uuid.encode(TOPIC_ID)
    assert raw.hex() == TOPIC_ID.replace("-", "")
    assert topic_ids.Uuid.decode(BytesIO(raw)) == TOPIC_ID


def answer(*topics: tuple[int, str, str]) -> SimpleNamespace:
    return SimpleNamespace(topics=[(code, name, tid, False, [], 0, {}) for code, name, tid in topics])


def test_topic_ids__maps_names_to_ids() -> None:
    assert topic_ids.topic_ids(answer((0, "a", TOPIC_ID))) == {"a": TOPIC_ID}


def test_topic_ids__unknown_topic_raises_the_brokers_error() -> None:
    with pytest.raises(UnknownTopicOrPartitionError):
        topic_ids.topic_ids(answer((3, "gone", ZERO)))


def test_topic_ids__zero_id_is_no_id() -> None:
    with pytest.raises(UnsupportedVersionError):
        topic_ids.topic_ids(answer((0, "a", ZERO)))
