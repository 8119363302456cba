"""The static-membership fence over aiokafka's group coordinator (its internals; ``faust_adapter.TESTED``).

aiokafka sends heartbeats at versions 0-1, which cannot carry the
``group.instance.id``; a member replaced by another process with the same
id then hears UNKNOWN_MEMBER_ID, resets its member id and joins again with
the same instance id, which replaces the other process in turn: both hold
the same partitions, a second at a time, under one generation. With an
instance id, heartbeats go out at version 3 with the id
(``StaticHeartbeatRequest``), so the broker answers FENCED_INSTANCE_ID to
the replaced member; from that answer on, the group protocol's requests
never return (no rejoin, no error for Faust to handle), offset commits fail
at once (a commit waiting on the fence would hold the stop), and the app's
``instance_fenced`` runs on the worker's loop (``faust_adapter.ConsumerThread``
installs it, ``runtime/membership.py`` says why).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka.errors import KafkaError, UnknownMemberIdError
from aiokafka.protocol import commit as commit_protocol
from aiokafka.protocol import group as group_protocol
from aiokafka.protocol.api import Request, RequestStruct
from aiokafka.protocol.types import Int32, Schema, String

log = logging.getLogger(__name__)

FENCED_INSTANCE_ID = 82  # Kafka's error code: another process joined with this group.instance.id


class StaticHeartbeatRequestV3(RequestStruct):
    """Heartbeat v3: v1's fields and the group.instance.id (KIP-345); the response is v1's."""

    API_KEY = 12
    API_VERSION = 3
    RESPONSE_TYPE = group_protocol.HeartbeatResponse_v1
    SCHEMA = Schema(
        ("group", String("utf-8")),
        ("generation_id", Int32),
        ("member_id", String("utf-8")),
        ("group_instance_id", String("utf-8")),
    )


class StaticHeartbeatRequest(Request[StaticHeartbeatRequestV3]):
    API_KEY = 12

    def __init__(self, group: str, generation_id: int, member_id: str, group_instance_id: str) -> None:
        self.fields = (group, generation_id, member_id, group_instance_id)

    def build(self, request_struct_class: type[StaticHeartbeatRequestV3]) -> StaticHeartbeatRequestV3:
        return request_struct_class(*self.fields)


UNKNOWN_MEMBER_ID = 25


def _unknown_member(response: Any) -> bool:
    """Whether a response says UNKNOWN_MEMBER_ID (at the top, or for a partition of an OffsetCommit)."""
    if getattr(response, "error_code", None) == UNKNOWN_MEMBER_ID:
        return True
    topics = getattr(response, "topics", None) if type(response).__name__.startswith("OffsetCommit") else None
    return any(part[-1] == UNKNOWN_MEMBER_ID for _, parts in topics or () for part in parts)


def watch_fence(coordinator: Any, instance_id: str, fenced: Callable[[], None]) -> None:
    """Heartbeats of ``coordinator`` carry ``instance_id``; once fenced, call ``fenced()`` and go silent.

    aiokafka's OffsetCommit and SyncGroup cannot carry the id either, so a
    replaced member hears UNKNOWN_MEMBER_ID there too, and would reset its
    member id and join again (replacing the other process). Before such an
    answer reaches the coordinator, a v3 heartbeat asks the broker which it
    is: FENCED_INSTANCE_ID (another process has the id: fenced) or not (the
    member expired: the answer goes on, and the coordinator joins afresh).
    """
    plain = coordinator._send_req
    out = False

    def heartbeat() -> StaticHeartbeatRequest:
        return StaticHeartbeatRequest(coordinator.group_id, coordinator.generation, coordinator.member_id,
                                      instance_id)

    async def silent(request: Any) -> Any:
        """A fenced member's request: offsets fail at once (Faust's commit, the stop's last one, goes
        on without them); the group protocol's never answer (no rejoin), until the consumer stops."""
        if isinstance(request, (commit_protocol.OffsetCommitRequest, commit_protocol.OffsetFetchRequest)):
            raise UnknownMemberIdError(f"fenced: another process has group.instance.id={instance_id}")
        return await asyncio.get_running_loop().create_future()

    async def send_req(request: Any) -> Any:
        nonlocal out
        if out:
            return await silent(request)
        heartbeating = isinstance(request, group_protocol.HeartbeatRequest)
        response = await plain(heartbeat() if heartbeating else request)
        verdict = response
        if not heartbeating and _unknown_member(response):
            try:
                verdict = await plain(heartbeat())
            except KafkaError:
                pass  # the coordinator is away: the first answer goes on
        if getattr(verdict, "error_code", None) == FENCED_INSTANCE_ID and not out:
            out = True
            log.critical("The group fenced this member: another process joined with group.instance.id=%s",
                         instance_id)
            fenced()
        return await silent(request) if out else response

    coordinator._send_req = send_req
