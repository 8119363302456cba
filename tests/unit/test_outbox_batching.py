"""Group send: commands ready in the same turn of the event loop share one record per partition.

The producer is a fake that records each record and acknowledges it with the
next offset of its partition (or fails it, as told); the outbox is the real one.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError

from streamapp.runtime import commands
from streamapp.runtime.limits import RECORD_OVERHEAD, CommandTooLargeError, Limits
from streamapp.runtime.outbox import Outbox


class Producer:
    def __init__(self, refuse_over: int | None = None) -> None:
        self.records: list[tuple[int, bytes, bytes]] = []
        self.offsets: dict[int, int] = {}
        self.refuse_over = refuse_over  # bytes: the broker refuses larger records

    async def send(self, topic: str, key: bytes, value: bytes, partition: int, *args: Any) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.refuse_over is not None and len(value) > self.refuse_over:
            fut.set_exception(MessageSizeTooLargeError())
            return fut
        self.records.append((partition, key, value))
        offset = self.offsets[partition] = self.offsets.get(partition, -1) + 1
        fut.set_result(SimpleNamespace(offset=offset))
        return fut


def outbox(producer: Producer) -> Outbox:
    app = SimpleNamespace(producer=producer)
    internal = SimpleNamespace(get_topic_name=lambda: "app-invocations")
    return Outbox(app, internal, None, 4)


def entry(inv: str, index: int = 0) -> dict[str, Any]:
    return {"op": "entry", "id": inv, "epoch": "e1", "index": index, "attempt": 1, "entry": {"v": inv}}


def held(value: bytes) -> list[str]:
    """The ids of the commands a record holds, in order."""
    return [cmd["id"] for cmd in commands.unpack(json.loads(value))]


async def test_commands_sent_in_one_turn_share_a_record_per_partition() -> None:
    producer = Producer()
    box = outbox(producer)
    await asyncio.gather(*(box.send(i % 2, f"S/k{i}", entry(f"i{i}")) for i in range(6)))
    assert sorted((p, held(v)) for p, _, v in producer.records) == [(0, ["i0", "i2", "i4"]), (1, ["i1", "i3", "i5"])]
    assert all(k == commands.BATCH_KEY for _, k, _ in producer.records)
    assert (box.records, box.commands) == (2, 6)
    assert {p: list(q) for p, q in box.extra.items()} == {0: [(0, 2)], 1: [(0, 2)]}


async def test_a_lone_command_has_a_record_of_its_own_as_before() -> None:
    producer = Producer()
    box = outbox(producer)
    await box.send(0, "S/k", entry("i1"))
    await box.send(0, "S/k", entry("i1", 1))  # the next one waits for the first's ack: its own turn
    assert [(p, k, json.loads(v)["op"]) for p, k, v in producer.records] == [(0, b"S/k", "entry"), (0, b"S/k", "entry")]
    assert box.extra == {}


async def test_activations_and_operator_commands_are_never_batched() -> None:
    producer = Producer()
    box = outbox(producer)
    await asyncio.gather(box.send(0, "S/k", entry("i1")), box.send(0, "S/k2", entry("i2")),
                         box.send(0, "activate/0", {"op": "activate", "epoch": "e2", "at": 1.0}),
                         box.send(0, "S/k3", {"op": "kill", "id": "i3"}))
    ops = [json.loads(v)["op"] for _, _, v in producer.records]
    assert sorted(ops) == ["activate", "batch", "kill"]


async def test_a_batch_keeps_the_order_commands_were_sent_in_and_splits_at_the_record_limit() -> None:
    producer = Producer()
    box = outbox(producer)
    one = len(commands.encode(entry("i00")))
    # Room for ten per record, besides the framing and the overhead the limit check counts.
    box.limits = Limits(command=10 * (one + 1) + RECORD_OVERHEAD + len(commands.BATCH_KEY) + commands.BATCH_FRAMING)
    await asyncio.gather(*(box.send(0, f"S/k{i}", entry(f"i{i:02d}")) for i in range(25)))
    records = [held(v) if k == commands.BATCH_KEY else [json.loads(v)["id"]] for _, k, v in producer.records]
    assert [inv for record in records for inv in record] == [f"i{i:02d}" for i in range(25)]
    assert [len(r) for r in records] == [10, 10, 5]
    assert all(len(k) + len(v) + RECORD_OVERHEAD <= box.limits.command for _, k, v in producer.records)


async def test_no_record_holds_more_than_max_batch_commands() -> None:
    producer = Producer()
    box = outbox(producer)
    n = commands.MAX_BATCH + 5
    await asyncio.gather(*(box.send(0, f"S/k{i}", entry(f"i{i}")) for i in range(n)))
    assert [len(held(v)) for _, _, v in producer.records] == [commands.MAX_BATCH, 5]


async def test_a_batch_refused_as_too_large_is_sent_again_one_by_one() -> None:
    one = len(commands.encode(entry("i1")))
    producer = Producer(refuse_over=one + 10)  # the topic's limit is lower than the outbox was told
    box = outbox(producer)
    await asyncio.gather(*(box.send(0, f"S/k{i}", entry(f"i{i}")) for i in range(3)))
    assert sorted(json.loads(v)["id"] for _, _, v in producer.records) == ["i0", "i1", "i2"]


async def test_a_command_too_large_on_its_own_fails_only_its_caller() -> None:
    producer = Producer()
    box = outbox(producer)
    box.limits = Limits(command=2000)
    big = {**entry("big"), "entry": {"v": "x" * 5000}}
    results = await asyncio.gather(box.send(0, "S/a", entry("a")), box.send(0, "S/big", big),
                                   box.send(0, "S/b", entry("b")), return_exceptions=True)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], CommandTooLargeError)
    assert [held(v) for _, _, v in producer.records] == [["a", "b"]]


async def test_a_cancelled_caller_does_not_stop_the_others_of_its_record() -> None:
    producer = Producer()
    box = outbox(producer)
    first = asyncio.ensure_future(box.send(0, "S/a", entry("a")))
    second = asyncio.ensure_future(box.send(0, "S/b", entry("b")))
    await asyncio.sleep(0)  # both queued for this turn's record
    first.cancel()
    await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert [held(v) for _, _, v in producer.records] == [["a", "b"]]  # idempotent when applied: sent anyway
