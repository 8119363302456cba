"""Ingest: records are attributed to the incarnation (topic id) of their source topic.

Broker-free: the topic-id lookup, the consumer and the runtime are fakes; the
offset guard is the real one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from aiokafka.errors import KafkaConnectionError, UnknownTopicOrPartitionError
from faust.types import TP

from streamapp.config import Settings
from streamapp.durable import ids
from streamapp.runtime import connection, offsets
from streamapp.runtime.offsets import OffsetGuard
from streamapp.runtime.sources import Ingest

OLD = "2b384d45-948b-45f7-bf1a-a5280752ba11"
NEW = "99ca58b8-ee8b-4ed6-8b23-14c2629147dc"
SRC = TP("src", 0)
OTHER = TP("other", 0)


@dataclass
class Msg:
    tp: TP
    offset: int
    key: bytes = b"k"
    value: bytes = b"{}"
    generation_id: int = 1
    acked: bool = False

    @property
    def topic(self) -> str:
        return str(self.tp.topic)

    @property
    def partition(self) -> int:
        return int(self.tp.partition)


def event(tp: TP, offset: int) -> Any:
    return SimpleNamespace(message=Msg(tp, offset))


@dataclass
class FakeRuntime:
    answers: list[Any]  # what the broker says on each topic-id lookup (a dict, or an exception to raise)
    earliest: int = 0
    overtaken_now: bool = False
    seeks: list[tuple[TP, int]] = field(default_factory=list)
    invoked: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.settings = Settings(app_id="app", subscriptions=(("src", "Test/Nap"), ("other", "Test/Nap")))
        self.kafka = connection.client_options(self.settings)
        self.guards = {"sources": OffsetGuard("sources", self.seek, self.baseline)}
        self.delivery = SimpleNamespace(guards=self.guards, seek=self.seek, overtaken=self.overtaken)
        self.outbox = SimpleNamespace(invoke=self.invoke)
        handler = SimpleNamespace(input_type=None, decode_input=lambda payload: payload)
        self.registry = SimpleNamespace(lookup=lambda service, name: handler)
        self.app = SimpleNamespace(consumer=SimpleNamespace(assignment=lambda: {SRC, OTHER},
                                                            earliest_offsets=self.earliest_offsets))

    async def lookup(self, topics: list[str]) -> dict[str, str]:
        answer = self.answers.pop(0)
        if callable(answer):  # something else runs while this lookup waits for the broker
            await answer()
            answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return {t: answer[t] for t in topics}

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def baseline(self, tp: TP) -> int:
        return 0

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, self.earliest)

    def overtaken(self, message: Any) -> bool:
        return self.overtaken_now

    async def invoke(self, target: dict[str, Any], source: Any = None) -> None:
        self.invoked.append({**target, "source": source})


def ingest(runtime: FakeRuntime) -> Ingest:
    return Ingest(runtime, lookup=runtime.lookup)  # type: ignore[arg-type]


async def test_confirm__same_topic_id_keeps_the_batch_and_names_the_incarnation_in_the_id() -> None:
    rt = FakeRuntime(answers=[{"src": OLD}, {"src": OLD}])
    ing = ingest(rt)
    await ing.on_assigned({SRC})
    batch = [event(SRC, 0), event(SRC, 1)]
    assert await ing.confirm(batch) == batch
    await ing.batch(batch)
    assert [inv["id"] for inv in rt.invoked] == [ids.for_record("app", "src", OLD, 0, 0),
                                                 ids.for_record("app", "src", OLD, 0, 1)]
    assert rt.invoked[0]["source"]["topic_id"] == OLD
    assert rt.seeks == []


async def test_confirm__topic_recreated_while_assigned__batch_dropped_and_new_topic_read_from_its_start() -> None:
    rt = FakeRuntime(answers=[{"src": OLD}, {"src": OLD}, {"src": NEW}, {"src": NEW}])
    ing = ingest(rt)
    guard = rt.guards["sources"]
    await ing.on_assigned({SRC})
    first = [event(SRC, 0)]
    assert await ing.confirm(first) == first
    assert await guard.admit(first[0].message)  # the old topic's offset 0 runs; the guard now expects 1
    await ing.batch(first)

    # The consumer's position fell off the recreated topic's end and was reset to its offset 0.
    again = [event(SRC, 0)]
    assert await ing.confirm(again) == []
    assert again[0].message.acked  # done with, not acked: the commit stays below it
    assert rt.seeks == [(SRC, 0)]

    reread = [event(SRC, 0)]
    assert await ing.confirm(reread) == reread
    assert await guard.admit(reread[0].message)  # not taken for a replay of the old topic's offset 0
    await ing.batch(reread)
    assert [inv["id"] for inv in rt.invoked] == [ids.for_record("app", "src", OLD, 0, 0),
                                                 ids.for_record("app", "src", NEW, 0, 0)]


async def test_confirm__only_the_recreated_topics_records_are_dropped() -> None:
    rt = FakeRuntime(answers=[{"src": OLD, "other": "o1"}, {"src": NEW, "other": "o1"}])
    ing = ingest(rt)
    await ing.on_assigned({SRC, OTHER})
    mixed = [event(SRC, 3), event(OTHER, 7)]
    assert await ing.confirm(mixed) == [mixed[1]]
    assert rt.seeks == [(SRC, 0)]


async def test_on_assigned__topic_recreated_since_last_assignment__read_from_its_start_not_the_commit(
        monkeypatch: Any) -> None:
    # The group's commit may still be the old topic's (the broker drops it some time after the
    # deletion) and Faust seeks there after the assignment: the guard seeks the start until it comes.
    monkeypatch.setattr(offsets, "RESEEK_AFTER", 0.0)
    rt = FakeRuntime(answers=[{"src": OLD}, {"src": NEW}])
    ing = ingest(rt)
    guard = rt.guards["sources"]
    await ing.on_assigned({SRC})
    guard.next[SRC] = 5  # read up to offset 4 of the old topic
    await ing.on_assigned({SRC})
    assert ing.topic_ids["src"] == NEW
    assert guard.next[SRC] == 0 and rt.seeks == []  # no seek inside the rebalance
    await guard.tick()
    assert rt.seeks == [(SRC, 0)]
    assert await guard.admit(Msg(SRC, 0))


async def test_confirm__topic_deleted_and_partition_revoked__batch_dropped_for_redelivery() -> None:
    rt = FakeRuntime(answers=[{"src": OLD}, UnknownTopicOrPartitionError("src")], overtaken_now=True)
    ing = ingest(rt)
    await ing.on_assigned({SRC})
    batch = [event(SRC, 9)]
    assert await ing.confirm(batch) == []
    assert batch[0].message.acked
    assert rt.invoked == []


async def test_on_assigned__no_answer_keeps_the_known_id__first_batch_detects_the_recreation() -> None:
    rt = FakeRuntime(answers=[{"src": OLD}, KafkaConnectionError("down"), {"src": NEW}])
    ing = ingest(rt)
    await ing.on_assigned({SRC})
    await ing.on_assigned({SRC})
    assert ing.topic_ids["src"] == OLD
    batch = [event(SRC, 0)]
    assert await ing.confirm(batch) == []
    assert rt.seeks == [(SRC, 0)]
    assert ing.topic_ids["src"] == NEW


async def test_watch__recreated_topic_found_without_any_record_arriving() -> None:
    # The new topic's only record lies below the consumer's read position: no batch reveals it.
    rt = FakeRuntime(answers=[{"src": OLD}, {"src": OLD, "other": "o1"}, {"src": NEW, "other": "o1"}])
    ing = ingest(rt)
    await ing.on_assigned({SRC})
    rt.guards["sources"].next[SRC] = 1
    await ing.watch()
    assert rt.seeks == []
    await ing.watch()
    assert rt.seeks == [(SRC, 0)]
    assert rt.guards["sources"].next[SRC] == 0


async def test_restart__seeks_again_until_the_new_topics_first_record_arrives(monkeypatch: Any) -> None:
    # Faust's recovery seeks to the group's commit (the old topic's, 1) after the restart sought 0:
    # nothing arrives, and no later record would reveal the gap. The guard seeks 0 again until it comes.
    monkeypatch.setattr(offsets, "RESEEK_AFTER", 0.0)
    rt = FakeRuntime(answers=[{"src": OLD}, {"src": NEW, "other": "o1"}])
    ing = ingest(rt)
    await ing.on_assigned({SRC})
    rt.guards["sources"].next[SRC] = 1
    await ing.watch()
    assert rt.seeks == [(SRC, 0)]
    guard = rt.guards["sources"]
    await guard.tick()
    await guard.tick()
    assert rt.seeks == [(SRC, 0), (SRC, 0), (SRC, 0)]
    assert await guard.admit(Msg(SRC, 0))  # the new topic's first record
    await guard.tick()
    assert rt.seeks == [(SRC, 0), (SRC, 0), (SRC, 0)] and guard.holes == {}


async def test_confirm__recreation_found_by_watch_during_the_lookup__batch_dropped() -> None:
    rt = FakeRuntime(answers=[{"src": OLD}])
    ing = ingest(rt)
    await ing.on_assigned({SRC})
    rt.answers += [ing.watch, {"src": NEW, "other": "o1"}, {"src": NEW}]  # watch sees NEW first, then the batch
    batch = [event(SRC, 4)]
    assert await ing.confirm(batch) == []
    assert batch[0].message.acked
    assert rt.seeks == [(SRC, 0)]


def confirm_by_fetch(ing: Ingest, tp: TP, first: int, end: int, topic_id: str) -> None:
    """As the consumer's client does once the answers around a fetch agree (``faust_fetch_ids``)."""
    request = SimpleNamespace(topics=[(tp.topic, [(tp.partition, first, 1 << 20)])])
    response = SimpleNamespace(topics=[(tp.topic, [(tp.partition, 0, end)])])
    ing.fetched.record(request, response, {tp.topic: topic_id}, {tp.topic: topic_id})


async def test_confirm__records_the_fetch_confirmed_as_the_known_incarnation_are_kept_without_asking() -> None:
    rt = FakeRuntime(answers=[{"src": OLD}])  # the assignment's lookup only: a batch lookup would find none
    ing = ingest(rt)
    await ing.on_assigned({SRC})
    confirm_by_fetch(ing, SRC, 0, 2, OLD)
    batch = [event(SRC, 0), event(SRC, 1)]
    assert await ing.confirm(batch) == batch
    assert ing.confirmed == {"fetch": 1, "asked": 0}
    await ing.batch(batch)
    assert [inv["id"] for inv in rt.invoked] == [ids.for_record("app", "src", OLD, 0, 0),
                                                 ids.for_record("app", "src", OLD, 0, 1)]


async def test_confirm__a_record_no_fetch_confirmed_makes_the_batch_ask() -> None:
    rt = FakeRuntime(answers=[{"src": OLD}, {"src": OLD}])
    ing = ingest(rt)
    await ing.on_assigned({SRC})
    confirm_by_fetch(ing, SRC, 0, 1, OLD)
    batch = [event(SRC, 0), event(SRC, 1)]  # offset 1 came with a fetch that confirmed nothing
    assert await ing.confirm(batch) == batch
    assert ing.confirmed == {"fetch": 0, "asked": 1} and rt.answers == []


async def test_confirm__fetch_confirmed_another_incarnation__asks_and_reads_the_new_topic_from_its_start() -> None:
    rt = FakeRuntime(answers=[{"src": OLD}, {"src": NEW}])
    ing = ingest(rt)
    await ing.on_assigned({SRC})
    confirm_by_fetch(ing, SRC, 0, 1, NEW)  # the topic was recreated before this fetch
    assert await ing.confirm([event(SRC, 0)]) == []
    assert ing.confirmed == {"fetch": 0, "asked": 1}
    assert rt.seeks == [(SRC, 0)] and ing.topic_ids["src"] == NEW
