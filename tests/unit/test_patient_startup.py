"""A broker that goes away while a worker starts: Faust's start-up waits (within the window) instead of exiting."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError
from faust.transport.drivers import aiokafka as faust_aiokafka

from streamapp.runtime import faust_adapter


def flaky(failures: list[BaseException], calls: list[str]) -> Any:
    async def create_topic(self: Any, owner: Any, client: Any, topic: str, *args: Any, **kwargs: Any) -> None:
        calls.append(topic)
        if failures:
            raise failures.pop(0)
    return create_topic


def transport() -> Any:
    """streamapp's transport, as a worker's app makes it (Faust's ``_create_topic`` below it is faked)."""
    app = faust.App("patient", broker=faust_adapter.transport_url(["127.0.0.1:1"]), store="memory://")
    assert isinstance(app.transport, faust_adapter.Transport)
    return app.transport


async def test_create_topic__connection_closed_by_a_restarting_broker_is_tried_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    closed = KafkaConnectionError("Connection at 127.0.0.1:9092 closed")
    monkeypatch.setattr(faust_aiokafka.Transport, "_create_topic", flaky([closed, closed], calls))
    faust_adapter.patient_bootstrap(patience=30)
    await transport()._create_topic(object(), object(), "t", 1, 1)
    assert calls == ["t", "t", "t"]


async def test_create_topic__past_the_window_or_for_a_lasting_error_fails_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    denied = TopicAuthorizationFailedError("denied")
    monkeypatch.setattr(faust_aiokafka.Transport, "_create_topic", flaky([denied], calls))
    faust_adapter.patient_bootstrap(patience=30)
    with pytest.raises(TopicAuthorizationFailedError):
        await transport()._create_topic(object(), object(), "t", 1, 1)
    monkeypatch.setattr(faust_aiokafka.Transport, "_create_topic", flaky([KafkaConnectionError("closed")], calls))
    faust_adapter.patient_bootstrap(patience=0)
    with pytest.raises(KafkaConnectionError):
        await transport()._create_topic(object(), object(), "t", 1, 1)
    assert calls == ["t", "t"]


async def test_client_bootstrap__the_producers_client_waits_for_a_restarting_broker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tries: list[int] = []

    async def bootstrap() -> None:
        tries.append(1)
        if len(tries) < 3:
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 1)]")

    made = SimpleNamespace(client=SimpleNamespace(bootstrap=bootstrap))  # what aiokafka's producer holds
    monkeypatch.setattr(faust_aiokafka.Producer, "_new_producer", lambda self, transactional_id=None: made)
    producer = transport().create_producer()._new_producer()
    faust_adapter.patient_bootstrap(patience=30)
    await producer.client.bootstrap()
    assert len(tries) == 3
    faust_adapter.patient_bootstrap(patience=0)
    tries.clear()
    with pytest.raises(KafkaConnectionError):
        await producer.client.bootstrap()


async def test_check_partitions__a_broker_going_away_while_it_reads_is_waited_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from streamapp.runtime import startup

    answers: list[object] = [KafkaConnectionError("Connection closed"), KafkaConnectionError("closed"), 4]

    async def existing_partitions(kafka: object, topic: str) -> int | None:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, int)
        return answer

    monkeypatch.setattr(startup, "existing_partitions", existing_partitions)
    faust_adapter.patient_bootstrap(patience=30)
    with pytest.raises(SystemExit, match="STREAMAPP_PARTITIONS=2 but the internal topic t has 4 partitions"):
        await startup.check_partitions({"bootstrap_servers": ["127.0.0.1:9092"]}, "t", 2)
    assert answers == []
