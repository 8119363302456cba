"""The harness's topic reader: "no record" must mean the topic is empty, not that the read was slow."""

from __future__ import annotations

import pytest

from tests import harness


def test_read_topic__a_read_that_cannot_reach_the_end_offsets_fails_instead_of_answering_empty(broker: str) -> None:
    topic = harness.unique("reads")
    harness.create_topics([topic])
    harness.produce(topic, [("k", "v")])
    with pytest.raises(TimeoutError):
        harness.read_topic(topic, timeout=0.0)  # no time to read: an empty answer would be a lie
    assert [(r.key, r.value) for r in harness.read_topic(topic)] == [(b"k", b"v")]
