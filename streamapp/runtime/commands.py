"""Commands on the internal invocations topic, and how they are keyed.

Every change to an invocation is a command record on
``{app_id}-invocations``, keyed by ``Service/key`` and partitioned like
Kafka's default partitioner (murmur2), so one key's commands are one log.
The invocations agent applies them to the tables in log order (one writer
per partition).

    op        from            meaning
    invoke    sources, HTTP,  a new invocation (deduplicated by id)
              ctx.send
    activate  the owner       this worker now drives the partition (epoch)
    entry     actor           journal entry ``index`` of the running attempt
    suspend   actor           parked on a durable timer until ``wake_at``
    retry     actor           attempt failed; run again at ``wake_at``
    complete  actor           result + state changes; the key moves on
    fail      actor           terminal failure (dead-lettered, or paused)
    fire      scheduler       a timer is due
    resume    operator        run a paused invocation again
    kill      operator        fail an invocation now; it runs no more steps
    cancel    operator        the step under way finishes, nothing after it (``operate.py``)
    purge     operator        forget a finished invocation's outcome
    expire    the owner       forget outcomes of invocations finished before ``before``

Each op is a typed command in ``ops.py`` (its fields, and how a record is
read and validated); this module is the wire: keys, partitions, JSON.

A record holds one command, or several bound for the same partition
(``{"op": "batch", "cmds": [...]}``, keyed ``batch``): the outbox puts the
commands that are ready at the same moment into one record
(``runtime/outbox.py``), and they are applied in their order in it. Only the
ops in ``BATCHABLE`` travel that way; an activation, an expiry and the
operator's commands always have a record of their own.
"""

from __future__ import annotations

import json
from typing import Any

from aiokafka.partitioner import murmur2

from streamapp.runtime import ops


def object_key(service: str, key: str) -> str:
    return f"{service}/{key}"


def partition_for(object_key_: str, partitions: int) -> int:
    return int(murmur2(object_key_.encode()) & 0x7FFFFFFF) % partitions


BATCH = "batch"
BATCH_KEY = b"batch"
BATCHABLE = frozenset({"invoke", "entry", "suspend", "retry", "complete", "fail", "fire"})
MAX_BATCH = 1000  # commands per record (below ``partition.SEQ_PER_RECORD``)
_BATCH_HEAD, _BATCH_TAIL = b'{"op":"batch","cmds":[', b"]}"
BATCH_FRAMING = len(_BATCH_HEAD) + len(_BATCH_TAIL)  # bytes a batch record adds to its commands, and a comma each


def encode(cmd: dict[str, Any]) -> bytes:
    return json.dumps(cmd, separators=(",", ":")).encode()


def encode_batch(encoded: list[bytes]) -> bytes:
    """One record value holding these commands (each already encoded), in this order."""
    return _BATCH_HEAD + b",".join(encoded) + _BATCH_TAIL


def decode(raw: bytes) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict) or "op" not in value:
        raise ValueError("not a command")
    return value


def unpack(value: dict[str, Any]) -> list[Any]:
    """The commands a decoded record holds, in order (a batch's entries are not checked here)."""
    if value.get("op") != BATCH:
        return [value]
    cmds = value.get("cmds")
    if not isinstance(cmds, list):
        raise ValueError("batch without a list of commands")
    return cmds


def invalid(cmd: dict[str, Any]) -> str | None:
    """Why ``cmd`` can never be applied, or None when it is well formed (the rules are ``ops.parse``'s)."""
    try:
        ops.parse(cmd)
    except ops.InvalidCommandError as exc:
        return str(exc)
    return None


def parse_record(value: bytes) -> tuple[list[tuple[int, ops.Command]], list[str]]:
    """The commands of an internal record that parse (with their index in it), and why the others do not."""
    try:
        cmds = unpack(decode(value))
    except ValueError:
        return [], ["undecodable command"]
    parsed, reasons = [], []
    for index, cmd in enumerate(cmds):
        try:
            if not isinstance(cmd, dict) or cmd.get("op") == BATCH:
                raise ops.InvalidCommandError("not a command")
            parsed.append((index, ops.parse(cmd)))
        except ops.InvalidCommandError as exc:
            reasons.append(str(exc) if len(cmds) == 1 else f"command {index} of the batch: {exc}")
    return parsed, reasons
