"""FetchedIds: the topic ids a Metadata request written behind each fetch confirms for its records.

Broker-free: the client and its connection are fakes that answer in the
order requests were written, as a broker does on one connection.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import RequestTimedOutError, UnknownTopicOrPartitionError
from aiokafka.protocol.fetch import FetchRequest

from streamapp.runtime.faust_fetch_ids import KEEP, FetchedIds
from streamapp.runtime.topic_ids import TopicIdsRequest

OLD = "2b384d45-948b-45f7-bf1a-a5280752ba11"
NEW = "99ca58b8-ee8b-4ed6-8b23-14c2629147dc"


def fetch(*parts: tuple[str, int, int]) -> FetchRequest:
    """A fetch of (topic, partition, offset)s."""
    topics: dict[str, list[tuple[int, int, int]]] = {}
    for topic, partition, offset in parts:
        topics.setdefault(topic, []).append((partition, offset, 1 << 20))
    return FetchRequest(10, 1, 1 << 20, 0, list(topics.items()))


def fetched(*parts: tuple[str, int, int, int]) -> Any:
    """A fetch response: (topic, partition, error code, high watermark)s."""
    topics: dict[str, list[tuple[Any, ...]]] = {}
    for topic, partition, error, highwater in parts:
        topics.setdefault(topic, []).append((partition, error, highwater, -1, -1, [], -1, b""))
    return SimpleNamespace(topics=list(topics.items()))


def ids(**found: str) -> Any:
    return SimpleNamespace(topics=[(0, name, topic_id, False, [], 0, {}) for name, topic_id in found.items()])


class Conn:
    """Answers requests in the order they were written (what each gets is queued in ``answers``)."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.written: list[Any] = []
        self.closed: Any = None

    def send(self, request: Any) -> Any:
        self.written.append(request)
        answer = self.answers.pop(0)

        async def wait() -> Any:
            if isinstance(answer, BaseException):
                raise answer
            return answer

        return wait()

    def close(self, reason: Any = None) -> None:
        self.closed = reason


class Client:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.plain: list[Any] = []
        self._conns: dict[Any, Conn] = {}

    async def ready(self, node_id: int, group: Any = None) -> bool:
        self._conns[(node_id, group)] = self.conn
        return True

    async def send(self, node_id: int, request: Any, **kwargs: Any) -> Any:
        self.plain.append(request)
        return "plain"


def installed(answers: list[Any], topics: tuple[str, ...] = ("src",)) -> tuple[FetchedIds, Client]:
    fids = FetchedIds(topics)
    client = Client(Conn(answers))
    fids.install(client)
    return fids, client


async def test_fetch__metadata_request_written_right_behind_it_on_the_same_connection() -> None:
    _, client = installed([fetched(("src", 0, 0, 5)), ids(src=OLD)])
    request = fetch(("src", 0, 0), ("commands", 3, 7))
    response = await client.send(1, request)
    assert response.topics[0][0] == "src"  # the fetcher gets the fetch's response
    first, second = client.conn.written
    assert first is request and isinstance(second, TopicIdsRequest) and second.topics == ["src"]
    assert client.plain == []


async def test_other_requests_and_fetches_of_no_source_topic_pass_through() -> None:
    _, client = installed([])
    other = object()
    assert await client.send(1, other) == "plain"
    assert await client.send(1, fetch(("commands", 0, 0))) == "plain"
    assert client.conn.written == []


async def test_first_fetch_on_a_connection_confirms_nothing__the_next_one_does() -> None:
    fids, client = installed([fetched(("src", 0, 0, 5)), ids(src=OLD), fetched(("src", 0, 0, 9)), ids(src=OLD)])
    await client.send(1, fetch(("src", 0, 0)))
    assert fids.id_of("src", 0, 0) is None  # no answer from before this fetch on this connection
    await client.send(1, fetch(("src", 0, 5)))
    assert [fids.id_of("src", 0, o) for o in (4, 5, 8, 9)] == [None, OLD, OLD, None]  # [fetch offset, highwater)


async def test_answers_that_differ_around_a_fetch_confirm_nothing() -> None:
    fids, client = installed([fetched(("src", 0, 0, 5)), ids(src=OLD), fetched(("src", 0, 0, 3)), ids(src=NEW),
                              fetched(("src", 0, 0, 6)), ids(src=NEW)])
    await client.send(1, fetch(("src", 0, 0)))
    await client.send(1, fetch(("src", 0, 0)))  # the topic was recreated around this fetch
    assert fids.id_of("src", 0, 1) is None
    await client.send(1, fetch(("src", 0, 3)))
    assert fids.id_of("src", 0, 4) == NEW and fids.id_of("src", 0, 1) is None


async def test_a_failed_metadata_request_confirms_nothing__nor_does_the_fetch_after_it() -> None:
    fids, client = installed([fetched(("src", 0, 0, 5)), ids(src=OLD),
                              fetched(("src", 0, 0, 9)), UnknownTopicOrPartitionError(),
                              fetched(("src", 0, 0, 12)), ids(src=OLD),
                              fetched(("src", 0, 0, 15)), ids(src=OLD)])
    for offset in (0, 5, 9, 12):
        await client.send(1, fetch(("src", 0, offset)))
    # The failed answer leaves no "before" for the next fetch: the one after that is confirmed again.
    assert [fids.id_of("src", 0, o) for o in (6, 10, 13)] == [None, None, OLD]


async def test_a_fetch_from_a_lower_offset_ends_the_ranges_kept_above_it() -> None:
    fids = FetchedIds(["src"])
    fids.record(fetch(("src", 0, 10)), fetched(("src", 0, 0, 20)), {"src": OLD}, {"src": OLD})
    assert fids.id_of("src", 0, 15) == OLD
    # Read again from 12 (a seek), and the topic ids differ around that fetch: 12.. is unknown now.
    fids.record(fetch(("src", 0, 12)), fetched(("src", 0, 0, 20)), {"src": OLD}, {"src": NEW})
    assert [fids.id_of("src", 0, o) for o in (11, 12, 15)] == [OLD, None, None]


async def test_partition_errors_and_empty_fetches_confirm_nothing() -> None:
    fids = FetchedIds(["src"])
    fids.record(fetch(("src", 0, 4), ("src", 1, 4)), fetched(("src", 0, 6, 9), ("src", 1, 0, 4)),
                {"src": OLD}, {"src": OLD})
    assert fids.id_of("src", 0, 5) is None and fids.id_of("src", 1, 4) is None


async def test_only_the_latest_ranges_are_kept__and_forget_drops_a_partition() -> None:
    fids = FetchedIds(["src"])
    for i in range(KEEP + 5):
        fids.record(fetch(("src", 0, i)), fetched(("src", 0, 0, i + 1)), {"src": OLD}, {"src": OLD})
    assert fids.id_of("src", 0, 4) is None and fids.id_of("src", 0, 5) == OLD
    fids.forget([("src", 0)])
    assert fids.id_of("src", 0, KEEP + 4) is None


async def test_fetch_timeout_renews_the_connection_as_the_client_would() -> None:
    _, client = installed([TimeoutError(), ids(src=OLD)])
    with pytest.raises(RequestTimedOutError):
        await client.send(1, fetch(("src", 0, 0)))
    assert client.conn.closed is not None
    await asyncio.sleep(0)  # the abandoned Metadata request leaves no unretrieved error behind


async def test_broker_without_topic_ids__fetches_go_out_alone_from_then_on() -> None:
    class OldBroker(Conn):
        def send(self, request: Any) -> Any:
            if isinstance(request, TopicIdsRequest):
                request.prepare({3: (0, 9)})  # raises: no Metadata v10
            return super().send(request)

    fids = FetchedIds(["src"])
    client = Client(OldBroker([fetched(("src", 0, 0, 5)), fetched(("src", 0, 0, 6))]))
    fids.install(client)
    await client.send(1, fetch(("src", 0, 0)))
    assert fids.unsupported and len(client.conn.written) == 1
    assert await client.send(1, fetch(("src", 0, 5))) == "plain"
