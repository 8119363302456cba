"""The static-membership fence (``faust_fence.watch_fence``) against a fake group coordinator."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import UnknownMemberIdError
from aiokafka.protocol.commit import OffsetCommitRequest, OffsetCommitResponse_v2
from aiokafka.protocol.group import HeartbeatRequest, HeartbeatResponse_v1

from streamapp.runtime import faust_fence
from streamapp.runtime.faust_fence import FENCED_INSTANCE_ID, UNKNOWN_MEMBER_ID, StaticHeartbeatRequest

BROKER_VERSIONS = {12: (0, 4)}  # the Heartbeat versions Apache Kafka 4.x accepts


class FakeCoordinator:
    """Answers each request with the next scripted response; remembers what went on the wire."""

    def __init__(self, *answers: Any) -> None:
        self.group_id, self.generation, self.member_id = "g", 7, "inst-a-123"
        self.answers = list(answers)
        self.sent: list[Any] = []

    async def _send_req(self, request: Any) -> Any:
        self.sent.append(request)
        return self.answers.pop(0)


def heartbeat_answer(code: int) -> HeartbeatResponse_v1:
    return HeartbeatResponse_v1(throttle_time_ms=0, error_code=code)


def commit_answer(code: int) -> OffsetCommitResponse_v2:
    return OffsetCommitResponse_v2(topics=[("t", [(0, 0), (1, code)])])


def watched(coordinator: FakeCoordinator) -> list[str]:
    calls: list[str] = []
    faust_fence.watch_fence(coordinator, "inst-a", lambda: calls.append("fenced"))
    return calls


def test_heartbeat__goes_out_at_v3_with_the_instance_id() -> None:
    wire = StaticHeartbeatRequest("g", 7, "inst-a-123", "inst-a").prepare(BROKER_VERSIONS)
    assert wire.API_VERSION == 3
    assert wire.encode().endswith(b"\x00\x06inst-a")
    coordinator = FakeCoordinator(heartbeat_answer(0))
    calls = watched(coordinator)
    answer = asyncio.run(coordinator._send_req(HeartbeatRequest("g", 7, "inst-a-123")))
    assert answer.error_code == 0 and calls == []
    assert isinstance(coordinator.sent[0], StaticHeartbeatRequest)
    assert coordinator.sent[0].fields == ("g", 7, "inst-a-123", "inst-a")


async def never_answers(call: Any) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(call, 0.2)


def test_fenced_heartbeat__the_app_is_told_and_the_coordinator_hears_nothing_more() -> None:
    coordinator = FakeCoordinator(heartbeat_answer(FENCED_INSTANCE_ID))
    calls = watched(coordinator)
    asyncio.run(never_answers(coordinator._send_req(HeartbeatRequest("g", 7, "inst-a-123"))))
    assert calls == ["fenced"]


def test_unknown_member_on_a_commit__a_heartbeat_asks_and_a_fenced_member_does_not_rejoin() -> None:
    coordinator = FakeCoordinator(commit_answer(UNKNOWN_MEMBER_ID), heartbeat_answer(FENCED_INSTANCE_ID))
    calls = watched(coordinator)
    commit = OffsetCommitRequest("g", 7, "inst-a-123", -1, [("t", [(1, 5, "")])])
    # Raised, not answered: aiokafka's commit fails without resetting the member id (no rejoin).
    with pytest.raises(UnknownMemberIdError):
        asyncio.run(coordinator._send_req(commit))
    assert calls == ["fenced"]
    assert isinstance(coordinator.sent[1], StaticHeartbeatRequest)
    # From then on: commits fail at once, the group protocol hears nothing, nothing reaches the broker.
    with pytest.raises(UnknownMemberIdError):
        asyncio.run(coordinator._send_req(commit))
    asyncio.run(never_answers(coordinator._send_req(HeartbeatRequest("g", 7, "inst-a-123"))))
    assert len(coordinator.sent) == 2 and calls == ["fenced"]


def test_unknown_member_on_a_commit__an_expired_member_gets_the_answer_and_joins_afresh() -> None:
    coordinator = FakeCoordinator(commit_answer(UNKNOWN_MEMBER_ID), heartbeat_answer(UNKNOWN_MEMBER_ID))
    calls = watched(coordinator)
    answer = asyncio.run(coordinator._send_req(SimpleNamespace(kind="OffsetCommit")))
    assert answer.topics == [("t", [(0, 0), (1, UNKNOWN_MEMBER_ID)])]
    assert calls == []


def test_other_answers__passed_on_without_asking() -> None:
    coordinator = FakeCoordinator(commit_answer(0))
    calls = watched(coordinator)
    assert asyncio.run(coordinator._send_req(SimpleNamespace(kind="OffsetCommit"))).topics[0][1][1] == (1, 0)
    assert len(coordinator.sent) == 1 and calls == []
