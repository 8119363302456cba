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
    kill      operator        fail an invocation; it runs no more steps
    expire    the owner       forget outcomes of invocations finished before ``before``
"""

from __future__ import annotations

import json
from typing import Any

from aiokafka.partitioner import murmur2


def object_key(service: str, key: str) -> str:
    return f"{service}/{key}"


def partition_for(object_key_: str, partitions: int) -> int:
    return (murmur2(object_key_.encode()) & 0x7FFFFFFF) % partitions


def encode(cmd: dict[str, Any]) -> bytes:
    return json.dumps(cmd, separators=(",", ":")).encode()


def decode(raw: bytes) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict) or "op" not in value:
        raise ValueError("not a command")
    return value


# Fields each command needs; a command missing one can never be applied.
REQUIRED: dict[str, tuple[str, ...]] = {
    "invoke": ("id", "service", "handler", "key"),
    "activate": ("epoch",),
    "entry": ("id", "epoch", "index", "entry"),
    "suspend": ("id", "epoch", "wake_at"),
    "retry": ("id", "epoch", "wake_at", "error"),
    "complete": ("id", "epoch"),
    "fail": ("id", "epoch", "error"),
    "fire": ("id", "epoch"),
    "resume": ("id",),
    "kill": ("id",),
    "expire": ("before",),
}


NUMBERS = ("wake_at", "not_before", "before", "at", "index", "attempt")


def invalid(cmd: dict[str, Any]) -> str | None:
    """Why ``cmd`` can never be applied, or None when it is well formed."""
    op = cmd.get("op")
    if op not in REQUIRED:
        return f"unknown command op={op!r}"
    missing = [name for name in REQUIRED[op] if cmd.get(name) is None]
    if missing:
        return f"command op={op} lacks {', '.join(missing)}"
    for name in NUMBERS:
        value = cmd.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"command op={op} has a non-numeric {name}"
    if op in ("invoke", "entry", "suspend", "retry", "complete", "fail", "fire", "resume", "kill") \
            and not isinstance(cmd["id"], str):
        return f"command op={op} has a non-string id"
    if op == "complete" and not isinstance(cmd.get("state") or {}, dict):
        return "command op=complete has state changes that are not an object"
    return None
