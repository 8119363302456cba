"""The largest record the broker accepts, and the checks that keep every write under it.

The broker refuses a record over its topic's ``max.message.bytes``
(``MessageSizeTooLargeError``, not retriable). These writes grow with what a
handler does:

    write                    topic                            holds
    command (entry, ...)     {app}-invocations                one journal entry; a result + state changes
    invocation record        {app}-invocations-changelog      payload + whole journal + last error
    outcome                  {app}-results-changelog          payload + whole journal + result or error
    state of a key           {app}-state-changelog            every state value of the key

The limits are asked of the broker once, when the invocations agent starts
(each topic's effective ``max.message.bytes``; the broker's
``message.max.bytes`` for a topic it cannot describe), capped by the
producer's ``max_request_size``. Nothing is guessed: until they are known no
command is applied.

Commands are checked before they are produced (``Runtime.send``); rows before
the engine writes them. An invocation whose next row would not fit ends
failed (dead-lettered with the reason) and its key moves on; a step result
too large to journal is journaled as a failed step, so the step is never run
again. A changelog record refused all the same (a limit lowered while the
worker runs, a broker error) stops the worker at once (``ChangelogGuard``):
Faust would only log it, and the local row would differ from what a failover
restores.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import MessageSizeTooLargeError
from faust.sensors import Sensor
from faust.serializers import codecs

from streamapp.durable.errors import TooLargeError

log = logging.getLogger(__name__)

# Room for what a record carries besides its key and value: the record batch
# header (61 bytes), the record's own header and varints; with room to spare.
RECORD_OVERHEAD = 512
ERROR_CHARS = 4000  # error texts kept in commands and records (their start)
EXIT_CHANGELOG_REFUSED = 70  # the worker's exit status when a changelog write was refused

WHAT = {
    "invocations": "the invocation's record (payload and whole journal)",
    "results": "the invocation's outcome (payload, whole journal and result)",
    "state": "the state of {key}",
}


class RowTooLargeError(TooLargeError):
    """A table row the changelog topic would refuse; ``rec`` is the invocation it belongs to."""

    def __init__(self, message: str, rec: dict[str, Any]) -> None:
        super().__init__(message)
        self.rec = rec


class CommandTooLargeError(MessageSizeTooLargeError):
    """A command over the internal topic's limit, refused before it is produced."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.text = message


def row_bytes(value: Any) -> bytes:
    """``value`` as a table's changelog record (and its store) holds it: the tables' JSON codec."""
    return codecs.dumps("json", value)


def row_size(value: Any) -> int:
    return len(row_bytes(value))


def clip(error: str) -> str:
    """An error text short enough to travel in any command or record."""
    return error if len(error) <= ERROR_CHARS else f"{error[:ERROR_CHARS]}… ({len(error)} characters)"


def reason(exc: BaseException) -> str:
    """What was too large, from a ``CommandTooLargeError`` or the broker's own refusal."""
    if isinstance(exc, CommandTooLargeError):
        return exc.text
    if isinstance(exc, MessageSizeTooLargeError):
        return "the broker refused a command as too large (MessageSizeTooLargeError)"
    return str(exc)


@dataclass(frozen=True)
class Limits:
    command: int = sys.maxsize  # largest command record (key + value + framing) on the internal topic
    rows: Mapping[str, int] = field(default_factory=dict)  # table name -> largest changelog record
    topics: Mapping[str, str] = field(default_factory=dict)  # "command" or table name -> topic, for messages

    def check_command(self, key: bytes, value: bytes, op: Any) -> None:
        size = len(key) + len(value) + RECORD_OVERHEAD
        if size > self.command:
            raise CommandTooLargeError(
                f"the {op} command would be {size} bytes, over the {self.command}-byte record limit of "
                f"topic {self.topics.get('command')} (max.message.bytes)")

    def row_error(self, table: str, key: str, value_bytes: int) -> str | None:
        """Why the changelog of ``table`` would refuse a row of ``value_bytes`` under ``key`` (None: it fits)."""
        limit = self.rows.get(table)
        size = value_bytes + len(key.encode()) + RECORD_OVERHEAD
        if limit is None or size <= limit:
            return None
        return (f"{WHAT[table].format(key=key)} would be {size} bytes, over the {limit}-byte record limit "
                f"of topic {self.topics.get(table)} (max.message.bytes)")

    def check_row(self, table: str, key: str, value: Any, rec: dict[str, Any]) -> bytes | None:
        """Raise ``RowTooLargeError`` if the changelog would refuse ``table[key] = value``.

        Returns the row's encoding, which the write can reuse (``PositionedTable.put``);
        None when the table's limit is not known (nothing was encoded).
        """
        if table not in self.rows:
            return None
        raw = row_bytes(value)
        if (error := self.row_error(table, key, len(raw))) is not None:
            raise RowTooLargeError(error, rec)
        return raw

    def fits(self, table: str, key: str, value: Any) -> bool:
        return table not in self.rows or self.row_error(table, key, row_size(value)) is None

    def fit_outcome(self, key: str, row: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
        """The outcome row itself, or, if the changelog would refuse it, without journal, payload, result.

        With the encoding of the row returned when it was measured (None otherwise).
        """
        dropped: list[str] = []
        for name, empty in (("journal", []), ("payload", None), ("result", None)):
            if "results" not in self.rows:
                return row, None
            raw = row_bytes(row)
            if self.row_error("results", key, len(raw)) is None:
                return row, raw
            dropped.append(name)
            row = {**row, name: empty, "dropped": list(dropped)}
        return row, None


async def read(admin: AIOKafkaAdminClient, topics: Mapping[str, str], cap: int) -> Limits:
    """Ask the broker for the record limit of each topic (role -> topic name)."""
    names = sorted(set(topics.values()))
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name, {"max.message.bytes": None}) for name in names])
    found = _config_values(responses, "max.message.bytes")
    missing = [name for name in names if name not in found]
    if missing:
        cluster = await admin.describe_cluster()
        brokers = [str(b["node_id"]) for b in cluster["brokers"]]
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, b, {"message.max.bytes": None}) for b in brokers])
        per_broker = _config_values(responses, "message.max.bytes")
        if not per_broker:
            raise LookupError(f"the broker did not say its message.max.bytes (topics {missing})")
        default = min(per_broker.values())
        log.info("Topics not described, using the broker's message.max.bytes=%d topics=%s", default, missing)
        found.update(dict.fromkeys(missing, default))
    limit = {role: min(found[name], cap) for role, name in topics.items()}
    return Limits(
        command=limit.pop("command", sys.maxsize), rows=limit, topics=dict(topics))


def _config_values(responses: Iterable[Any], name: str) -> dict[str, int]:
    """resource name -> value of config ``name`` in DescribeConfigs responses (resources without error)."""
    out: dict[str, int] = {}
    for response in responses:
        for error_code, _message, _type, resource, entries in response.resources:
            if error_code != 0:
                continue
            for entry in entries:
                if entry[0] == name and entry[1] is not None:
                    out[resource] = int(entry[1])
    return out


class ChangelogGuard(Sensor):
    """Stops the worker when the broker refuses a changelog record.

    Faust's ``Topic._on_published`` only logs a failed send. A refused
    changelog record means the local RocksDB row differs from what another
    worker restores, and the command that wrote it is committed at the next
    commit. Exiting at once (no graceful stop, which would commit) makes the
    command be applied again by the next owner of the partition, loudly.
    """

    def __init__(self, topics: Callable[[], set[str]], exit: Callable[[int], Any] = os._exit) -> None:
        super().__init__()
        self.topics = topics
        self.exit = exit

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> Any:
        return topic

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        if state in self.topics():
            self.refused(state, exc)

    def refused(self, topic: str, exc: BaseException) -> None:
        """A changelog write to ``topic`` was refused (Faust's send, or a batch of staged rows)."""
        log.critical("Changelog write refused, stopping the worker so no commit passes it topic=%s error=%r",
                     topic, exc)
        for handler in logging.getLogger().handlers:
            handler.flush()
        self.exit(EXIT_CHANGELOG_REFUSED)
