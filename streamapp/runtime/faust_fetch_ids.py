"""Topic ids confirmed by each fetch, without a round trip of their own (aiokafka internals; checked with
``faust_adapter.TESTED``).

The sources agent attributes every source record to its topic's incarnation
by bracketing (``runtime/sources.py``): an answer about the topic's id given
before the record was fetched and one given after must name the same id.
Asked by the agent, the "after" answer is a Metadata round trip for every
batch, on every source record's way to its invocation (about 1 ms at rest,
3 ms under load).

A Kafka broker handles the requests of one connection one at a time, in the
order they were sent: it reads no further request from a connection until
it has answered the one it is handling. So a Metadata request written on a
fetch's connection right behind the Fetch request is handled after the fetch
was served, and its answer arrives right behind the fetch's: an "after"
answer for every record that fetch brought. The answer to the previous such
request on the same connection was handled before this fetch: a "before"
answer. Topic ids are never reused, so when both name the same id for a
topic, that topic was that incarnation throughout, and so were the records
this fetch brought of it. ``FetchedIds`` keeps, per partition, the offsets
each confirmed fetch covered (from its fetch offset up to the partition's
high watermark in the response) and the id; the sources agent reads them
instead of asking (``Ingest.confirm``). Anything else (no earlier answer on
this connection, the answers differ, the Metadata request failed, a broker
without topic ids, a range no longer kept) confirms nothing, and the agent
asks the broker as before.

The consumer's client ``send`` is wrapped on the instance
(``FetchedIds.install``): aiokafka's fetcher sends its ``FetchRequest``
through it and gets the response as before; every other request passes
through untouched. It runs on the consumer's thread; the agent reads on the
worker's loop, so each partition's ranges are replaced whole (one dict
assignment), never changed in place.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Iterable
from typing import Any

from aiokafka.client import ConnectionGroup
from aiokafka.conn import CloseReason
from aiokafka.errors import KafkaError, NodeNotReadyError, RequestTimedOutError, UnsupportedVersionError
from aiokafka.protocol.fetch import FetchRequest

from streamapp.runtime.topic_ids import TopicIdsRequest, topic_ids

log = logging.getLogger(__name__)

KEEP = 32  # confirmed ranges kept per partition (older records fall back to asking the broker)

Range = tuple[int, int, str]  # first offset, end offset (exclusive), topic id


class FetchedIds:
    """What each fetch of the source topics confirmed: partition -> offsets -> topic id."""

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = frozenset(topics)
        self.ranges: dict[tuple[str, int], tuple[Range, ...]] = {}
        # connection -> topic -> the id its last answered Metadata request gave (answered before later fetches)
        self.before: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()
        self.unsupported = False  # the broker has no topic ids: nothing to confirm

    def id_of(self, topic: str, partition: int, offset: int) -> str | None:
        """The topic id the fetch that brought this record confirmed, if one did."""
        for first, end, topic_id in reversed(self.ranges.get((topic, partition), ())):
            if first <= offset < end:
                return topic_id
        return None

    def install(self, client: Any) -> None:
        """Wrap ``client.send`` (on the instance): fetches of source topics carry a Metadata request behind them."""
        plain = client.send

        async def send(node_id: int, request: Any, **kwargs: Any) -> Any:
            topics = self._asked(request)
            if not topics:
                return await plain(node_id, request, **kwargs)
            return await self._fetch(client, node_id, request, topics, **kwargs)

        client.send = send

    def _asked(self, request: Any) -> list[str]:
        if self.unsupported or not isinstance(request, FetchRequest):
            return []
        return sorted({topic for topic, _ in request.topics if topic in self.topics})

    async def _fetch(self, client: Any, node_id: int, request: Any, topics: list[str], **kwargs: Any) -> Any:
        """``AIOKafkaClient.send`` for a fetch, with the Metadata request written right behind it."""
        group = kwargs.get("group", ConnectionGroup.DEFAULT)
        if not await client.ready(node_id, group=group):
            raise NodeNotReadyError(f"Attempt to send a request to node which is not ready (node id {node_id}).")
        conn = client._conns[(node_id, group)]
        fetching = asyncio.ensure_future(conn.send(request))
        before = dict(self.before.get(conn, {}))  # answered before this fetch was written
        asking: asyncio.Future[Any] | None = None
        try:
            asking = asyncio.ensure_future(conn.send(TopicIdsRequest(topics)))
        except UnsupportedVersionError:
            self.unsupported = True
        except KafkaError:
            pass  # the fetch fails the same way, below
        try:
            response = await fetching
        except TimeoutError as exc:  # as AIOKafkaClient.send: the connection is renewed
            _forget(asking)
            conn.close(reason=CloseReason.CONNECTION_TIMEOUT)
            raise RequestTimedOutError() from exc
        except BaseException:
            _forget(asking)
            raise
        after = await self._answer(asking)
        if after is None:
            self.before.pop(conn, None)
        else:
            self.before.setdefault(conn, {}).update(after)
        self.record(request, response, before, after or {})
        return response

    @staticmethod
    async def _answer(asking: asyncio.Future[Any] | None) -> dict[str, str] | None:
        if asking is None:
            return None
        try:
            return topic_ids(await asking)
        except (TimeoutError, KafkaError, OSError) as exc:  # a deleted topic, a broken connection...
            log.debug("No topic ids behind this fetch error=%r", exc)
            return None

    def record(self, request: Any, response: Any, before: dict[str, str], after: dict[str, str]) -> None:
        """Keep the ranges this fetch confirmed; a fetch from an offset ends the ranges kept above it."""
        starts = {(topic, partition): offset
                  for topic, partitions in request.topics if topic in self.topics
                  for partition, offset, *_ in partitions}
        for topic, partitions in response.topics:
            if topic not in self.topics:  # the internal topic and the changelogs: nothing to confirm
                continue
            topic_id = after.get(topic)
            sure = topic_id if topic_id is not None and before.get(topic) == topic_id else None
            for partition, error_code, highwater, *_ in partitions:
                tp = (topic, partition)
                first = starts.get(tp)
                if first is None:
                    continue
                kept = tuple((a, min(b, first), i) for a, b, i in self.ranges.get(tp, ()) if a < first)
                if sure is not None and not error_code and highwater > first:
                    kept = (*kept, (first, highwater, sure))[-KEEP:]
                self.ranges[tp] = kept

    def forget(self, tps: Iterable[tuple[str, int]]) -> None:
        """Partitions no longer assigned here: their ranges go."""
        for tp in tps:
            self.ranges.pop((tp[0], tp[1]), None)


def _forget(asking: asyncio.Future[Any] | None) -> None:
    """The Metadata request's answer is no longer wanted (its error, if any, is not left unretrieved)."""
    if asking is None:
        return
    asking.add_done_callback(lambda fut: fut.cancelled() or fut.exception())
    asking.cancel()
