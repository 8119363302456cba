"""The ack gate: a record the runtime did not handle never becomes committable."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streamapp.runtime import faust_adapter, faust_pacing
from streamapp.runtime.delivery import Delivery


@dataclass(eq=False)
class Msg:
    topic: str
    acked: bool = False


def close(*apps: faust.App) -> None:
    """Close the loop each consumer's (never started) thread made for itself."""
    for app in apps:
        app.consumer._thread.thread_loop.close()  # type: ignore[attr-defined]


def app_on(broker: str, handled: set[int]) -> faust.App:
    app = faust.App(f"gate-{id(handled)}", broker=broker, store="memory://")
    app.ack_gate = lambda message: id(message) in handled  # type: ignore[attr-defined]
    return app


async def test_refused_acks_mark_the_delivery_done_but_do_not_reach_the_consumer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    counted: list[Msg] = []
    monkeypatch.setattr(faust_aiokafka.Consumer, "ack", lambda self, m: counted.append(m) or True)
    handled, skipped = Msg("t"), Msg("t")
    app = app_on(faust_adapter.transport_url(["127.0.0.1:1"]), {id(handled)})
    assert app.consumer.ack(handled) is True  # type: ignore[arg-type]
    assert app.consumer.ack(skipped) is False  # type: ignore[arg-type]
    close(app)
    assert counted == [handled]
    assert skipped.acked  # so Faust's rebalance does not wait for it


async def test_the_gate_is_on_streamapps_transport_only() -> None:
    # Selected through Faust's transport registry by the broker URL's scheme; Faust's own classes are untouched.
    ours = app_on(faust_adapter.transport_url(["127.0.0.1:1"]), set())
    plain = app_on("kafka://127.0.0.1:1", set())
    assert isinstance(ours.consumer, faust_adapter.Consumer)
    assert isinstance(ours.producer, faust_adapter.Producer)
    assert not isinstance(plain.consumer, faust_adapter.Consumer)
    assert faust_aiokafka.Consumer.ack is not faust_adapter.Consumer.ack
    close(ours, plain)


def test_untested_faust_or_aiokafka__refused_with_the_versions_unless_allowed(
        monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    faust_adapter.check_versions(env={})  # the pinned versions pass
    monkeypatch.setitem(faust_adapter.TESTED, "faust-streaming", ("0.0.1",))
    with pytest.raises(faust_adapter.UntestedVersionError, match=r"faust-streaming 0\.15\.3 \(tested: 0\.0\.1\)"):
        faust_adapter.check_versions(env={})
    faust_adapter.check_versions(env={faust_adapter.ALLOW_UNTESTED: "1"})
    assert "faust-streaming 0.15.3 (tested: 0.0.1)" in caplog.text


class FakeFetcher:
    """aiokafka's Fetcher as AdaptiveWait sees it: records not consumed yet, and the request builder."""

    def __init__(self) -> None:
        self._records: dict[str, Any] = {}
        self._fetch_max_wait_ms = 1500
        self.built: list[int] = []

    def _get_actions_per_node(self, assignment: Any) -> str:
        self.built.append(self._fetch_max_wait_ms)
        return "requests"


def test_fetch_wait__short_while_records_flow_long_at_rest() -> None:
    now = [100.0]
    fetcher = FakeFetcher()
    faust_pacing.AdaptiveWait(fetcher, clock=lambda: now[0])
    assert fetcher._get_actions_per_node(None) == "requests"  # just started: as if busy
    now[0] += 5
    stale = SimpleNamespace(_created=now[0] - 60)  # a changelog's records no agent reads
    fetcher._records = {"changelog": stale}
    fetcher._get_actions_per_node(None)  # at rest all the same
    fetcher._records = {"changelog": stale, "tp": SimpleNamespace(_created=now[0])}  # a fetch brought records
    fetcher._get_actions_per_node(None)
    fetcher._records = {"changelog": stale}
    now[0] += faust_pacing.IDLE_AFTER / 2  # consumed; records flowed a moment ago
    fetcher._get_actions_per_node(None)
    now[0] += faust_pacing.IDLE_AFTER  # nothing since: at rest
    fetcher._get_actions_per_node(None)
    short, idle = faust_pacing.FETCH_MAX_WAIT_MS, faust_pacing.IDLE_FETCH_WAIT_MS
    assert fetcher.built == [short, idle, short, short, idle]


def test_linger__only_while_the_producer_sends_many_records_a_second() -> None:
    now = [0.0]
    client = SimpleNamespace(_message_accumulator=SimpleNamespace(_linger_time=0.002))
    linger = faust_pacing.AdaptiveLinger(0.002, clock=lambda: now[0])
    window, above = faust_pacing.LINGER_WINDOW, faust_pacing.LINGER_ABOVE
    lingers = []
    for rate in (50, above * 2, above * 2, above / 2, above * 3):
        n = int(rate * window)
        for _ in range(n):  # ``rate`` records a second over one window
            now[0] += window / n * 1.001
            linger.sent(client)
        lingers.append(client._message_accumulator._linger_time)
    assert lingers == [0.0, 0.002, 0.002, 0.0, 0.002]
    now[0] += 60  # quiet for a minute: the next record goes out at once
    linger.sent(client)
    assert client._message_accumulator._linger_time == 0.0
    linger.sent(SimpleNamespace())  # a client not started yet has no accumulator: nothing to set


async def test_recovery__a_changelog_partition_without_a_start_offset_is_read_from_its_start() -> None:
    """Faust worked out None for a partition (its leader being elected): aiokafka refused the seek, recovery crashed."""
    sought: list[dict[Any, int]] = []

    class Consumer:
        async def seek_wait(self, offsets: dict[Any, int]) -> None:
            sought.append(dict(offsets))

    recovery = faust_adapter.Recovery.__new__(faust_adapter.Recovery)
    offsets: Counter[str] = Counter({"a": 41, "b": -1})
    offsets["c"] = None  # type: ignore[assignment]
    await recovery._seek_offsets(Consumer(), {"a", "b", "c", "d"}, offsets, "standby")
    assert sought == [{"a": 41, "b": 0, "c": 0, "d": 0}]  # -1, None and missing: from the start


class _Message:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.offset = topic, offset
        self.tp = TP(topic, partition)


def test_a_refused_ack_of_a_record_no_agent_took_is_told_to_that_agents_guard() -> None:
    delivery = Delivery(SimpleNamespace(), {})
    delivery.gate(["internal"], "invocations")
    delivery.gate(["src"], "sources")
    internal, src = TP("internal", 0), TP("src", 0)
    delivery.guards["invocations"].next[internal] = 5
    delivery.guards["sources"].next[src] = 5

    handled = _Message("internal", 0, 5)
    delivery.mark_handled(handled)
    assert delivery.ackable(handled) and delivery.guards["invocations"].holes == {}
    skipped = _Message("internal", 0, 6)  # Faust's stream skipped it
    assert not delivery.ackable(skipped)
    assert delivery.guards["invocations"].holes[internal].expected == 5
    assert delivery.guards["sources"].holes == {}  # the other agent's guard is not concerned
    assert delivery.ackable(_Message("changelog", 0, 1))  # not gated
