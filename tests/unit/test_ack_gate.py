"""The ack gate: a record the runtime did not handle never becomes committable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from faust.transport.consumer import Consumer

from streamapp.runtime import tuning


@dataclass(eq=False)
class Msg:
    topic: str
    acked: bool = False


class FakeApp:
    def __init__(self, handled: set[int]) -> None:
        self.handled = handled

    def ack_gate(self, message: Any) -> bool:
        return id(message) in self.handled


class FakeConsumer:
    def __init__(self, app: FakeApp) -> None:
        self.app = app


def test_refused_acks_mark_the_delivery_done_but_do_not_reach_the_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    counted: list[Msg] = []
    monkeypatch.setattr(tuning, "_original_ack", lambda self, m: counted.append(m) or True)
    handled, skipped = Msg("t"), Msg("t")
    consumer = FakeConsumer(FakeApp({id(handled)}))
    assert tuning._gated_ack(consumer, handled) is True
    assert tuning._gated_ack(consumer, skipped) is False
    assert counted == [handled]
    assert skipped.acked  # so Faust's rebalance does not wait for it


def test_install_puts_the_gate_on_faust_consumers() -> None:
    tuning.install()
    assert Consumer.ack is tuning._gated_ack
