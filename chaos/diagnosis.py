"""Diagnosis from the internal topic (not a check): source records admitted out of offset order."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass


def clock(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


@dataclass(frozen=True)
class Admission:
    """An ``invoke`` command of a source record on the internal topic."""

    source_offset: int
    time: float  # the command's record timestamp (set by the worker that produced it)


def late_admissions(admissions: Iterable[Admission], slack: float = 1.0) -> list[str]:
    """Ranges of source records made into invocations only after later records were.

    The sources agent admits records in offset order, so a source record whose first
    ``invoke`` comes more than ``slack`` seconds after a later record's first ``invoke``
    was skipped and read again later (after a rebalance): its key's later events can
    then run before it.
    """
    first: dict[int, float] = {}
    for a in admissions:
        first[a.source_offset] = min(a.time, first.get(a.source_offset, a.time))
    offsets = sorted(first)
    later_min: dict[int, tuple[float, int]] = {}
    best: tuple[float, int] = (float("inf"), -1)
    for o in reversed(offsets):
        later_min[o] = best
        best = min(best, (first[o], o))
    late = [o for o in offsets if later_min[o][0] < first[o] - slack]
    ranges: list[list[int]] = []
    for o in late:
        if ranges and o == ranges[-1][-1] + 1:
            ranges[-1].append(o)
        else:
            ranges.append([o])
    out = []
    for rng in ranges:
        lo, hi = rng[0], rng[-1]
        t_ahead, o_ahead = later_min[hi]
        out.append(f"source offsets {lo}-{hi} admitted at {clock(first[lo])}, after offset {o_ahead} "
                   f"(admitted {clock(t_ahead)}): skipped, then read again")
    return out
