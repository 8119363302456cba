"""Apply at ack: the owner applies a command it wrote as soon as the broker acknowledges it.

Every step of an invocation is a command the partition's owner writes to the
internal topic and then applies. Read back through the consumer, each one
costs a fetch on top of the produce: the fetch that carries it may be one
already in flight without its partition (aiokafka leaves out partitions
whose fetched records are still being handed over), so a step waited for
the fetch wait on top of the produce. The log is the single writer's order,
and the owner knows the offset of what it wrote. So when the broker
acknowledges a record and it is exactly the record the invocations agent
expects next in that partition, the owner applies it there and then:

  1. the record is acknowledged (acks=all) at offset ``o`` of partition
     ``p``: it is durable, and it is the log's record at ``o``;
  2. it qualifies only when all of these hold, else nothing happens here and
     the agent applies it when it reads it back, as before:
     - every command in it is one the outbox groups (``BATCHABLE``:
       invocations' own steps; activations, operator commands and expiries
       are always read back);
     - its commands all parse;
     - the worker drives ``p`` (activated and live, not fenced after a
       stall, not fenced out of its instance id), no rebalance is under
       way, and the agent has read the record limits;
     - the agent's offset guard expects ``o`` next for ``p``, with no hole
       open and no probe under way (``OffsetGuard.take``): every record
       before ``o`` was applied, so no activation of another worker (nor any
       other writer's command) comes between;
  3. it is applied as the agent would apply it (``Runtime.apply_parsed``),
     with the tables' writes going to ``p`` (``faust_readers.as_record_of``);
     its rows are staged for the changelogs like any other command's, and
     the guard now expects ``o + 1``;
  4. the agent reads the record back later: the guard skips it as handled
     already and the agent marks it handled, so Faust may count its ack; the
     commit passes ``o`` only then, after the flush that sends its rows
     (``runtime/delivery.py``'s protocol, unchanged).

A crash between 3 and 4 loses nothing: the record is in the log and its
offset is not committed, so the partition's next owner applies it again
(applying is idempotent). Acks of one partition usually arrive in offset
order; one that arrives before its predecessor waits here (``pending``) for
it, and what is left behind is read back as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from faust.types import TP

from streamapp.runtime import commands, faust_readers

log = logging.getLogger(__name__)

MAX_PENDING = 1000  # acknowledged records per partition waiting for a predecessor


class AckApply:
    def __init__(self, runtime: Any, allowed: Callable[[int], bool]) -> None:
        """``allowed(p)``: whether the worker drives ``p`` now (step 2's conditions on the worker)."""
        self.runtime = runtime
        self.allowed = allowed
        self.pending: dict[int, dict[int, bytes]] = {}  # partition -> offset -> value
        self.applied = 0  # records applied here, ahead of their delivery

    def forget(self) -> None:
        self.pending.clear()

    def on_durable(self, p: int, offset: int, value: bytes, ops: list[str]) -> None:
        """The broker acknowledged ``value`` (commands ``ops``) at ``offset`` of internal partition ``p``."""
        if not all(op in commands.BATCHABLE for op in ops):
            return
        if not self.allowed(p):
            self.pending.pop(p, None)
            return
        rt = self.runtime
        topic = rt.internal.get_topic_name()
        tp = TP(topic, p)
        guard = rt.delivery.guards["invocations"]
        expected = guard.next.get(tp)
        if expected is None or offset < expected:
            return  # read back already, or the guard does not know where the partition stands
        pending = self.pending.setdefault(p, {})
        pending[offset] = value
        while (at := guard.next.get(tp)) is not None and at in pending:
            cmds, reasons = commands.parse_record(pending[at])
            if reasons or not guard.take(tp, at):
                break  # the agent reads it back (and dead-letters what does not parse)
            del pending[at]
            with faust_readers.as_record_of(topic, p, at):
                rt.apply_parsed(p, at, cmds)
            self.applied += 1
        at = guard.next.get(tp)
        for o in [o for o in pending if at is None or o < at]:
            del pending[o]
        if len(pending) > MAX_PENDING:
            pending.clear()  # a predecessor that never came: the agent reads them all back
