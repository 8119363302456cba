"""Kafka topic ids (KIP-516): which incarnation of a topic a record came from.

A topic deleted and created again under the same name starts again at offset
0, and so does a topic of the same name on another cluster; its topic id (a
UUID the controller assigns at creation) differs. aiokafka 0.14 speaks
Metadata up to v5 only, which has no topic id, so this module defines the
flexible Metadata v10-v13 request and response (the versions that carry
``topic_id``) on aiokafka's protocol types and sends them through an
``AIOKafkaClient``; the connection negotiates the highest version both sides
know. A broker older than 2.8 (no Metadata v10) has no topic ids: the lookup
then gives ``""`` for every topic (and says so once), so ids are unique per
topic name only, as they were before topic ids were used.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from io import BytesIO
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import UnsupportedVersionError, for_code
from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Boolean, CompactArray, CompactString, Int16, Int32, Schema, TaggedFields

log = logging.getLogger(__name__)

ZERO = "00000000-0000-0000-0000-000000000000"  # Kafka's "no id" (Uuid.ZERO_UUID)


class Uuid(AbstractType[str]):
    """Kafka's ``uuid`` field: 16 bytes, most significant first."""

    @classmethod
    def encode(cls, value: str) -> bytes:
        return uuid.UUID(value).bytes

    @classmethod
    def decode(cls, data: BytesIO) -> str:
        raw = data.read(16)
        if len(raw) != 16:
            raise ValueError("Buffer underrun decoding uuid")
        return str(uuid.UUID(bytes=raw))


_BROKERS = CompactArray(
    ("node_id", Int32), ("host", CompactString("utf-8")), ("port", Int32),
    ("rack", CompactString("utf-8")), ("tags", TaggedFields),
)
_TOPICS = CompactArray(
    ("error_code", Int16),
    ("name", CompactString("utf-8")),
    ("topic_id", Uuid),
    ("is_internal", Boolean),
    ("partitions", CompactArray(
        ("error_code", Int16), ("partition_index", Int32), ("leader_id", Int32), ("leader_epoch", Int32),
        ("replica_nodes", CompactArray(Int32)), ("isr_nodes", CompactArray(Int32)),
        ("offline_replicas", CompactArray(Int32)), ("tags", TaggedFields),
    )),
    ("topic_authorized_operations", Int32),
    ("tags", TaggedFields),
)
_HEAD = (("throttle_time_ms", Int32), ("brokers", _BROKERS), ("cluster_id", CompactString("utf-8")),
         ("controller_id", Int32), ("topics", _TOPICS))
_REQUEST_TOPICS = CompactArray(("topic_id", Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields))


class MetadataResponseV10(Response):
    API_KEY = 3
    API_VERSION = 10
    SCHEMA = Schema(*_HEAD, ("cluster_authorized_operations", Int32), ("tags", TaggedFields))


class MetadataResponseV11(Response):
    API_KEY = 3
    API_VERSION = 11
    SCHEMA = Schema(*_HEAD, ("tags", TaggedFields))


class MetadataResponseV12(Response):
    API_KEY = 3
    API_VERSION = 12
    SCHEMA = MetadataResponseV11.SCHEMA


class MetadataResponseV13(Response):
    API_KEY = 3
    API_VERSION = 13
    SCHEMA = Schema(*_HEAD, ("error_code", Int16), ("tags", TaggedFields))


class MetadataRequestV10(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 10
    RESPONSE_TYPE = MetadataResponseV10
    SCHEMA = Schema(
        ("topics", _REQUEST_TOPICS), ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean), ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class MetadataRequestV11(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 11
    RESPONSE_TYPE = MetadataResponseV11
    SCHEMA = Schema(
        ("topics", _REQUEST_TOPICS), ("allow_auto_topic_creation", Boolean),
        ("include_topic_authorized_operations", Boolean), ("tags", TaggedFields),
    )


class MetadataRequestV12(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 12
    RESPONSE_TYPE = MetadataResponseV12
    SCHEMA = MetadataRequestV11.SCHEMA


class MetadataRequestV13(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 13
    RESPONSE_TYPE = MetadataResponseV13
    SCHEMA = MetadataRequestV11.SCHEMA


class TopicIdsRequest(
    Request[MetadataRequestV10 | MetadataRequestV11 | MetadataRequestV12 | MetadataRequestV13]
):
    """Metadata of the named topics, at a version that carries their topic ids."""

    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics

    def build(self, request_struct_class: type[Any]) -> Any:
        topics: list[tuple[str, str, dict[int, bytes]]] = [(ZERO, name, {}) for name in self.topics]
        if request_struct_class.API_VERSION == 10:
            return request_struct_class(topics, False, False, False, {})
        return request_struct_class(topics, False, False, {})

    def prepare(self, versions: dict[int, tuple[int, int]]) -> Any:
        _, high = versions.get(self.API_KEY, (0, -1))
        if high < 10:
            raise UnsupportedVersionError(f"the broker speaks Metadata up to v{high}; topic ids need v10")
        return super().prepare(versions)


def topic_ids(response: Any) -> dict[str, str]:
    """Name → topic id from a Metadata v10+ response; raises the broker's error for a topic it refused."""
    found: dict[str, str] = {}
    for error_code, name, topic_id, *_ in response.topics:
        if error_code:
            raise for_code(error_code)(f"topic {name}")
        if topic_id == ZERO:
            raise UnsupportedVersionError(f"the broker gave no topic id for {name}")
        found[name] = topic_id
    return found


class TopicIds:
    """Asks the broker for topic ids, with a client of its own (opened on first use)."""

    def __init__(self, kafka: Mapping[str, Any]) -> None:
        self.kafka = kafka  # client options: servers and security (runtime/connection.py)
        self._client: AIOKafkaClient | None = None
        self._warned = False

    async def lookup(self, topics: list[str]) -> dict[str, str]:
        if self._client is None:
            client = AIOKafkaClient(**self.kafka, request_timeout_ms=10000)
            await client.bootstrap()
            self._client = client
        try:
            response = await self._client.send(self._client.get_random_node(), TopicIdsRequest(topics))
            return topic_ids(response)
        except UnsupportedVersionError as exc:
            if not self._warned:
                log.warning("No topic ids from this broker; a recreated source topic reuses invocation ids "
                            "error=%r", exc)
                self._warned = True
            return dict.fromkeys(topics, "")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
