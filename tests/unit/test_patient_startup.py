"""A broker that goes away while a worker starts: Faust's start-up waits (within the window) instead of exiting."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError
from faust.transport.drivers import aiokafka as faust_aiokafka

from streamapp.runtime import tuning


@pytest.fixture
def restore() -> Any:
    bootstrap, create_topic = AIOKafkaClient.bootstrap, faust_aiokafka.Transport._create_topic
    yield
    AIOKafkaClient.bootstrap = bootstrap  # type: ignore[method-assign]
    faust_aiokafka.Transport._create_topic = create_topic  # type: ignore[method-assign]


def flaky(failures: list[BaseException], calls: list[str]) -> Any:
    async def create_topic(self: Any, owner: Any, client: Any, topic: str, *args: Any, **kwargs: Any) -> None:
        calls.append(topic)
        if failures:
            raise failures.pop(0)
    return create_topic


async def test_create_topic__connection_closed_by_a_restarting_broker_is_tried_again(
        restore: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    closed = KafkaConnectionError("Connection at 127.0.0.1:9092 closed")
    monkeypatch.setattr(tuning, "_plain_create_topic", flaky([closed, closed], calls))
    tuning.patient_bootstrap("kafka://127.0.0.1:9092", patience=30)
    await faust_aiokafka.Transport._create_topic(object(), object(), object(), "t", 1, 1)
    assert calls == ["t", "t", "t"]


async def test_create_topic__past_the_window_or_for_a_lasting_error_fails_at_once(
        restore: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(tuning, "_plain_create_topic",
                        flaky([TopicAuthorizationFailedError("denied")], calls))
    tuning.patient_bootstrap("kafka://127.0.0.1:9092", patience=30)
    with pytest.raises(TopicAuthorizationFailedError):
        await faust_aiokafka.Transport._create_topic(object(), object(), object(), "t", 1, 1)
    monkeypatch.setattr(tuning, "_plain_create_topic", flaky([KafkaConnectionError("closed")], calls))
    tuning.patient_bootstrap("kafka://127.0.0.1:9092", patience=0)
    with pytest.raises(KafkaConnectionError):
        await faust_aiokafka.Transport._create_topic(object(), object(), object(), "t", 1, 1)
    assert calls == ["t", "t"]


async def test_check_partitions__a_broker_going_away_while_it_reads_is_waited_for(
        restore: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamapp.runtime import startup

    answers: list[object] = [KafkaConnectionError("Connection closed"), KafkaConnectionError("closed"), 4]

    async def existing_partitions(servers: list[str], topic: str) -> int | None:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, int)
        return answer

    monkeypatch.setattr(startup, "existing_partitions", existing_partitions)
    tuning.patient_bootstrap("kafka://127.0.0.1:9092", patience=30)
    with pytest.raises(SystemExit, match="STREAMAPP_PARTITIONS=2 but the internal topic t has 4 partitions"):
        await startup.check_partitions(["127.0.0.1:9092"], "t", 2)
    assert answers == []
