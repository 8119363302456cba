"""OffsetGuard: each partition's records reach the agent once, in offset order, without holes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from faust.types import TP

from streamapp.runtime import offsets
from streamapp.runtime.offsets import OffsetGuard

TP0 = TP("t", 0)
TP1 = TP("t", 1)


@dataclass
class Msg:
    tp: TP
    offset: int
    generation_id: int = 1
    acked: bool = False


class Harness:
    """A guard over fake partitions whose logs hold every offset except ``missing`` (None: probes fail)."""

    def __init__(self, committed: dict[TP, int | None] | None = None, missing: set[int] | None = None,
                 probes_fail: bool = False) -> None:
        self.committed = committed or {}
        self.missing: set[int] | None = None if probes_fail else (missing or set())
        self.seeks: list[tuple[TP, int]] = []
        self.probes: list[tuple[TP, int]] = []
        self.closed: list[tuple[TP, int, int]] = []
        self.baseline_calls: list[TP] = []
        self.guard = OffsetGuard("test", self.seek, self.baseline, lambda tp, a, b: self.closed.append((tp, a, b)),
                                 probe=self.probe)
        self.processed: list[tuple[int, int]] = []

    async def probe(self, tp: TP, offset: int) -> int | None:
        self.probes.append((tp, offset))
        if self.missing is None:
            return None
        while offset in self.missing:
            offset += 1
        return offset

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def baseline(self, tp: TP) -> int | None:
        self.baseline_calls.append(tp)
        return self.committed.get(tp, 0)

    async def deliver(self, tp: TP, *offs: int, gen: int = 1) -> list[Msg]:
        msgs = [Msg(tp, o, gen) for o in offs]
        for m in msgs:
            if await self.guard.admit(m):
                self.processed.append((tp.partition, m.offset))
        return msgs


async def test_in_order_records_pass_and_the_baseline_is_asked_once_per_partition() -> None:
    h = Harness({TP0: 10, TP1: 0})
    await h.deliver(TP0, 10, 11, 12)
    await h.deliver(TP1, 0, 1)
    assert h.processed == [(0, 10), (0, 11), (0, 12), (1, 0), (1, 1)]
    assert h.baseline_calls == [TP0, TP1]
    assert h.seeks == []


async def test_records_below_the_expected_offset_are_replays_skipped_and_acked_normally() -> None:
    h = Harness({TP0: 0})
    await h.deliver(TP0, 0, 1, 2, 3)
    replays = await h.deliver(TP0, 1, 2, 3, 4)  # Faust re-reads a kept partition from its commit
    assert h.processed == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]
    assert not any(m.acked for m in replays)  # left for Faust's normal ack
    assert h.guard.replayed == 3


async def test_stale_records_ahead_of_the_commit_are_dropped_until_the_seek_delivers_the_range() -> None:
    # A fetch from before the rebalance hands over 50..52 while the commit is at 40.
    h = Harness({TP0: 40})
    stale = await h.deliver(TP0, 50, 51, 52)
    assert h.processed == []
    assert h.seeks == [(TP0, 40)]
    assert all(m.acked for m in stale)  # done with, never acked to the consumer: the commit stays at 40
    await h.deliver(TP0, *range(40, 54))
    assert [o for _, o in h.processed] == list(range(40, 54))
    assert h.closed == [(TP0, 40, 52)]
    assert h.guard.holes == {}


async def test_a_jump_after_a_rebalance_seeks_back_to_the_first_missing_offset() -> None:
    h = Harness({TP0: 0})
    await h.deliver(TP0, 0, 1, 2, gen=1)
    await h.deliver(TP0, 7, 8, gen=2)  # kept through the rebalance; a stale fetch ran ahead
    assert h.seeks == [(TP0, 3)]
    await h.deliver(TP0, 3, 4, 5, 6, 7, 8, 9, gen=2)
    assert [o for _, o in h.processed] == list(range(10))


async def test_a_jump_within_one_generation_is_checked_against_the_broker_too() -> None:
    # Faust drops records inside a generation as well (a rebalance starting, a frozen worker waking).
    h = Harness({TP0: 0})
    await h.deliver(TP0, 0, 1, 2, 7, 8)
    assert h.probes == [(TP0, 3)] and h.seeks == [(TP0, 3)]
    assert [o for _, o in h.processed] == [0, 1, 2]
    await h.deliver(TP0, 3, 4, 5, 6, 7, 8)
    assert [o for _, o in h.processed] == list(range(9))


async def test_a_gap_the_broker_confirms_is_accepted_without_seeking() -> None:
    # Transaction markers or compaction: offsets 3..6 hold no records.
    h = Harness({TP0: 0}, missing={3, 4, 5, 6})
    await h.deliver(TP0, 0, 1, 2, 7, 8)
    assert [o for _, o in h.processed] == [0, 1, 2, 7, 8]
    assert h.seeks == []
    assert h.guard.real_holes == 1 and h.guard.holes == {}


async def test_part_of_a_jump_is_a_gap_and_the_rest_is_read_again() -> None:
    h = Harness({TP0: 0}, missing={3, 4})
    await h.deliver(TP0, 0, 1, 2, 9)
    assert h.seeks == [(TP0, 5)]  # 3 and 4 hold nothing; 5..8 exist and were skipped by the delivery
    await h.deliver(TP0, 5, 6, 7, 8, 9)
    assert [o for _, o in h.processed] == [0, 1, 2, 5, 6, 7, 8, 9]


async def test_the_same_later_record_delivered_again_does_not_close_a_hole_the_broker_denies() -> None:
    # Faust may drop the re-read range as old and hand over the later record again.
    h = Harness({TP0: 0})
    await h.deliver(TP0, 0, 1, 2, gen=1)
    await h.deliver(TP0, 7, gen=2)
    await h.deliver(TP0, 7, 8, gen=2)
    assert [o for _, o in h.processed] == [0, 1, 2]
    assert h.guard.holes[TP0].expected == 3
    await h.deliver(TP0, 3, 4, 5, 6, 7, 8, gen=2)
    assert [o for _, o in h.processed] == list(range(9))


async def test_a_failed_probe_is_repeated_when_the_guard_seeks_again(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness({TP0: 0}, probes_fail=True)
    await h.deliver(TP0, 0, 1, 2, 7)
    assert h.seeks == [(TP0, 3)] and h.guard.holes[TP0].expected == 3
    h.missing = {3, 4, 5, 6}  # the broker answers now: nothing lies between 2 and 7
    monkeypatch.setattr(offsets, "RESEEK_AFTER", -1.0)
    await h.guard.tick()
    assert h.seeks == [(TP0, 3), (TP0, 7)]
    await h.deliver(TP0, 7, 8)
    assert [o for _, o in h.processed] == [0, 1, 2, 7, 8]


async def test_an_open_hole_is_sought_again_by_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness({TP0: 5})
    await h.deliver(TP0, 9)
    await h.guard.tick()
    assert h.seeks == [(TP0, 5)]  # not again within RESEEK_AFTER
    monkeypatch.setattr(offsets, "RESEEK_AFTER", -1.0)
    await h.guard.tick()
    assert h.seeks == [(TP0, 5), (TP0, 5)]


async def test_the_start_offset_is_asked_again_until_the_broker_answers() -> None:
    h = Harness()
    answers: list[int | None] = [None, None, 17]

    async def flaky(tp: TP) -> int | None:
        return answers.pop(0)

    h.guard._baseline = flaky
    await h.deliver(TP0, 19, 17, 18, 19)
    assert [o for _, o in h.processed] == [17, 18, 19]
    assert h.seeks == [(TP0, 17)]


async def test_a_record_overtaken_by_a_rebalance_is_dropped_while_the_broker_is_unreachable() -> None:
    h = Harness()

    async def unreachable(tp: TP) -> int | None:
        return None

    h.guard._baseline = unreachable
    h.guard._stale = lambda message: message.generation_id < 2
    dropped = await h.deliver(TP0, 5, gen=1)
    assert h.processed == [] and dropped[0].acked  # not committable; Faust delivers it again
    assert TP0 not in h.guard.next


async def test_forget_makes_the_guard_ask_for_the_baseline_again() -> None:
    h = Harness({TP0: 0, TP1: 0})
    await h.deliver(TP0, 0, 1)
    await h.deliver(TP1, 0)
    h.guard.forget([TP0])
    h.committed[TP0] = 30  # another worker moved it on meanwhile
    await h.deliver(TP0, 30)
    await h.deliver(TP1, 1)
    h.guard.forget()
    h.committed[TP1] = 2
    await h.deliver(TP1, 2)
    assert h.baseline_calls == [TP0, TP1, TP0, TP1]
    assert h.processed == [(0, 0), (0, 1), (1, 0), (0, 30), (1, 1), (1, 2)]


async def test_a_dropped_record_with_nothing_after_it_is_read_again_by_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust's stream skipped records 80-88 around a rebalance and no later record came: nothing revealed them."""
    h = Harness({TP0: 78})
    await h.deliver(TP0, 78, 79)
    for offset in range(80, 89):
        h.guard.dropped(TP0, offset)  # the ack gate refused their acks: no agent took them
    await h.guard.tick()
    assert h.seeks == []  # not at once: Faust may still deliver them (RESEEK_AFTER)
    monkeypatch.setattr(offsets, "RESEEK_AFTER", -1.0)
    await h.guard.tick()
    assert h.probes == [(TP0, 80)] and h.seeks == [(TP0, 80)]  # the broker asked first: records may lie between
    await h.deliver(TP0, *range(80, 89))
    assert [o for _, o in h.processed] == list(range(78, 89))
    assert TP0 not in h.guard.holes


async def test_a_dropped_record_past_a_gap_is_sought_where_the_log_continues(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness({TP0: 0}, missing={1, 2})  # say, transaction markers
    await h.deliver(TP0, 0)
    h.guard.dropped(TP0, 3)
    monkeypatch.setattr(offsets, "RESEEK_AFTER", -1.0)
    await h.guard.tick()
    assert h.seeks == [(TP0, 3)]
    await h.deliver(TP0, 3)
    assert [o for _, o in h.processed] == [0, 3]


async def test_a_dropped_record_that_arrives_after_all_closes_the_hole_without_a_seek(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness({TP0: 0})
    await h.deliver(TP0, 0)
    h.guard.dropped(TP0, 1)
    await h.deliver(TP0, 1, 2)  # delivered again (a fetch Faust had under way)
    monkeypatch.setattr(offsets, "RESEEK_AFTER", -1.0)
    await h.guard.tick()
    assert h.seeks == [] and [o for _, o in h.processed] == [0, 1, 2]


async def test_a_dropped_record_the_agent_took_or_of_an_unknown_partition_opens_no_hole() -> None:
    h = Harness({TP0: 0})
    await h.deliver(TP0, 0, 1)
    h.guard.dropped(TP0, 1)  # taken, then its ack refused (its batch not durable): read again from the commit
    h.guard.dropped(TP1, 5)  # a partition the guard knows nothing of (moved away, forgotten)
    assert h.guard.holes == {}


async def test_records_read_by_the_consumer_but_never_delivered_are_sought_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust cleared its stream queue on resume after a rebalance: records 80-88 vanished without an ack."""
    h = Harness({TP0: 78})
    read: dict[TP, int] = {}
    h.guard.handed_over = read.get
    await h.deliver(TP0, 78, 79)
    read[TP0] = 79
    monkeypatch.setattr(offsets, "STUCK_AFTER", -1.0)
    await h.guard.tick()
    await h.guard.tick()
    assert h.seeks == []  # everything the consumer read reached the agent
    read[TP0] = 88  # read 80-88; none reached the agent
    await h.guard.tick()
    assert h.seeks == []  # first seen now: it may still be on its way
    await h.guard.tick()
    assert h.probes == [(TP0, 80)] and h.seeks == [(TP0, 80)]
    await h.deliver(TP0, *range(80, 89))
    assert [o for _, o in h.processed] == list(range(78, 89)) and h.guard.holes == {}


async def test_a_partition_whose_agent_moves_on_or_is_paused_is_not_taken_for_stuck(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness({TP0: 0})
    read = {TP0: 5}
    h.guard.handed_over = read.get
    monkeypatch.setattr(offsets, "STUCK_AFTER", -1.0)
    await h.deliver(TP0, 0)
    await h.guard.tick()  # expects 1, read up to 5: waiting
    await h.deliver(TP0, 1, 2)  # the agent moved on meanwhile
    await h.guard.tick()
    assert h.seeks == []
    paused = True
    h.guard.paused = lambda: paused  # fenced: the agent leaves records aside on purpose
    await h.guard.tick()
    await h.guard.tick()
    assert h.seeks == []
    paused = False
    await h.guard.tick()
    assert h.seeks == []  # idle again: counted afresh from now
    await h.guard.tick()
    assert h.seeks == [(TP0, 3)]


async def test_records_held_up_behind_a_busy_agent_are_not_taken_for_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sources batch awaiting its acks holds up the records read after it; idle again, they are counted afresh."""
    h = Harness({TP0: 0})
    read = {TP0: 9}
    h.guard.handed_over = read.get
    monkeypatch.setattr(offsets, "STUCK_AFTER", -1.0)
    await h.deliver(TP0, 0)
    h.guard.busy = True
    for _ in range(3):
        await h.guard.tick()
    assert h.seeks == []
    h.guard.busy = False
    await h.guard.tick()
    assert h.seeks == []
    await h.guard.tick()
    assert h.probes == [(TP0, 1)] and h.seeks == [(TP0, 1)]
