"""Changelog records say which command wrote them; a restore ignores a deposed writer's late records.

Every table row is written while applying one command of the internal topic,
to the changelog partition of that command's partition. Each changelog
record carries, in the ``streamapp.at`` header, the internal-topic offset of
that command. Commands are applied in offset order, so one writer's records
in a changelog partition carry non-decreasing offsets.

A worker frozen past its session (SIGSTOP, a VM pause) can hold table rows
in its producer's buffers. When it wakes, they are sent, after the rows of
the worker that took its partitions over meanwhile. That worker had read the
internal topic from the group's committed offset, so it applied the same
commands again and went further: the late rows are older versions of what it
wrote. Replayed in log order they would win, and the next owner to restore
the partition would start from an older row than the one its predecessor
acted on (a journal without its latest entries, an invocation finished and
deleted that comes back).

So restoring keeps, per changelog partition, the highest offset seen so far,
and skips a record whose offset is lower. A record skipped this way is a
copy of a command applied by a writer whose records, or a later writer's,
are already in: the same command applied by each writer in turn from the
same rows gives the same rows, and a writer's records for a command are
sent, in order, before its commit passes that command (``runtime/flush.py``).
Records without the header (written by an earlier version) are applied.

The highest offsets are kept in memory, including those of this worker's own
writes, written to ``writers.json`` at a clean stop (beside the local
tables the next start trusts) and forgotten when the tables are restored in
full.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import faust
from faust.serializers import codecs as faust_codecs
from faust.types import TP

from streamapp.runtime import faust_readers

log = logging.getLogger(__name__)

HEADER = "streamapp.at"
POSITIONS_FILE = "writers.json"


class Positions:
    """The command offset being applied per partition, and the highest one seen per changelog partition."""

    def __init__(self) -> None:
        self.applying: dict[int, int] = {}  # internal partition -> offset of the command being applied
        self.high: dict[TP, int] = {}  # changelog partition -> highest command offset written or restored
        self.skipped = 0

    def forget(self, tps: list[TP]) -> None:
        """Those changelog partitions are restored from their start: what was seen no longer counts."""
        for tp in tps:
            self.high.pop(tp, None)

    def save(self, table_dir: Path) -> None:
        data = {f"{tp.topic}\0{tp.partition}": at for tp, at in self.high.items()}
        (table_dir / POSITIONS_FILE).write_text(json.dumps(data))

    def load(self, table_dir: Path) -> None:
        """Take what a clean stop saved (read once: the file describes the tables as they were then)."""
        path = table_dir / POSITIONS_FILE
        if not path.exists():
            return
        try:
            data = json.loads(path.read_text())
            for name, at in data.items():
                topic, _, partition = name.rpartition("\0")
                self.high[TP(topic, int(partition))] = int(at)
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("Ignoring unreadable changelog positions file=%s error=%r", path, exc)
        path.unlink()


def header_value(headers: Any, wanted: str) -> Any:
    """The value of header ``wanted`` of a record's headers (a list of pairs or a mapping), if any."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, dict) else headers
    for name, value in pairs:
        if name == wanted:
            return value
    return None


def header_offset(headers: Any) -> int | None:
    """The ``streamapp.at`` offset of a changelog record's headers, if any."""
    value = header_value(headers, HEADER)
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


DELETED = object()  # a staged row that is a deletion (a tombstone in the changelog)
Record = tuple[bytes, "bytes | None", list[tuple[str, bytes]]]  # key, value (None: a tombstone), headers


@dataclasses.dataclass
class StagedRows:
    """One changelog partition's staged rows, encoded, in the order they must be written."""

    table: PositionedTable
    topic: str
    partition: int
    records: list[Record]


class PositionedTable(faust.Table[str, Any]):
    """A Faust table whose changelog records carry the command offset that wrote them, written as net effects.

    A write goes to the local store at once (reads see it) and is *staged*
    for the changelog: per partition, the last value of each key, in the
    order of their last writes. ``take_staged`` encodes what is staged, and
    the producer's flush first sends that, one record batch per changelog
    partition (``flush.send_rows``, ``runtime/flush.py``),
    so the rows of every command a commit passes are sent, and acknowledged,
    before it. An invocation that starts and finishes between two commits
    writes one tombstone for its row, not a record per change. The
    tombstone is needed although the changelog may never have had the row:
    a worker woken from a stall restores its tables from the start of the
    changelogs over its local rows (``Tables.distrust_local``), and its
    local copy of an invocation another worker created again and finished
    meanwhile goes only if the changelog says so (leaving it out let a
    woken worker run finished invocations again, in
    ``test_pause_past_session__woken_worker_runs_no_step_of_invocations_taken_over``).

    The order keeps restores sound: within a partition the staged rows go out
    in the order of their last writes, so the offsets in their headers never
    decrease (commands are applied in offset order), and after the rows of
    one flush the changelog holds the table as it was after the last command
    applied before it.
    """

    positions: Positions
    # partition -> key -> (encoded value or DELETED, command offset, headers)
    staged: dict[int, dict[Any, tuple[Any, int | None, list[tuple[str, bytes]]]]]

    def get(self, key: Any, default: Any = None) -> Any:
        """Faust's ``Table.get``, with one store read (``faust_readers.read_row``) instead of two.

        The same answers: the row's value; for a key without a row, what
        ``__missing__`` gives (the table's ``default()`` when it has one),
        else ``default``, as ``Mapping.get`` turns the ``KeyError`` of
        ``table[key]`` into ``default``. A table without ``default`` (and
        Faust's own ``__missing__``) answers a missing key without raising
        that ``KeyError`` first.
        """
        try:
            self.on_key_get(key)
            value = faust_readers.read_row(self.data, key)
            if value is not faust_readers.MISSING:
                return value
            if self.default is None and type(self).__missing__ is faust.Table.__missing__:
                return default
            return self.__missing__(key)
        except KeyError:
            return default

    def __getitem__(self, key: Any) -> Any:
        """``table[key]`` as Faust answers it (``__missing__`` for a key without a row), with one store read."""
        self.on_key_get(key)
        value = faust_readers.read_row(self.data, key)
        return self.__missing__(key) if value is faust_readers.MISSING else value

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    def put(self, key: Any, value: Any, raw: bytes | None = None) -> None:
        """``table[key] = value``, encoded once for the store and the changelog (``raw``: the caller's encoding).

        Faust's own path encodes the value for the store, and the staged row
        is encoded again for the changelog; a caller that measured the row
        (``limits.check_row``) has its encoding already. Both hold the same
        bytes: a restore writes the changelog's records into the store as
        they are.
        """
        dump_key, dump_value = self._row_codecs()
        if raw is None:
            raw = dump_value(value)
        self._stage(key, raw, self.row_headers(value))
        self._sensor_on_set(self, key, value)
        faust_readers.put_raw(self.data, dump_key(key), raw)

    def row_headers(self, value: Any) -> list[tuple[str, bytes]]:
        """Headers the changelog record of a row with ``value`` carries besides its offset (none here)."""
        return []

    def on_key_set(self, key: Any, value: Any) -> None:  # ``update`` and other Faust paths
        self._stage(key, self._row_codecs()[1](value), self.row_headers(value))
        self._sensor_on_set(self, key, value)

    def on_key_del(self, key: Any) -> None:
        self._stage(key, DELETED)
        self._sensor_on_del(self, key)

    def _stage(self, key: Any, value: bytes | object, headers: list[tuple[str, bytes]] | None = None) -> None:
        """Stage the row's encoded value (or ``DELETED``) for the next flush."""
        partition = self.partition_for_key(key)  # the partition of the command being applied
        if partition is None:
            raise TypeError(f"table {self.name} is written outside the invocations agent")
        rows = self.staged.setdefault(partition, {})
        rows.pop(key, None)  # re-inserted last: the order of last writes
        rows[key] = (value, self.positions.applying.get(partition), headers or [])

    def take_staged(self) -> list[StagedRows]:
        """What is staged, encoded as the changelog's records (net effect, in order of last writes), and forgotten.

        Per partition, one ``StagedRows``: the caller sends them as record
        batches (``flush.send_rows``) and calls ``rows_sent`` once the
        broker has them.
        """
        staged, self.staged = self.staged, {}
        if not staged:
            return []
        topic = self.changelog_topic.get_topic_name()
        dump_key = self._row_codecs()[0]
        high = self.positions.high
        out = []
        for partition, rows in staged.items():
            records = []
            top = None
            for key, (value, at, extra) in rows.items():
                headers = [] if at is None else [(HEADER, str(at).encode())]
                if extra and value is not DELETED:
                    headers.extend(extra)
                if at is not None:
                    top = at
                records.append((dump_key(key), None if value is DELETED else value, headers))
            if top is not None:
                # Its own writes count: a later restore of this partition skips records older than them.
                tp = TP(topic, partition)
                high[tp] = max(top, high.get(tp, -1))
            out.append(StagedRows(self, topic, partition, records))
        return out

    def _row_codecs(self) -> tuple[Any, Any]:
        """Key and value encoders, as Faust's own changelog sends encode (the table's serializers)."""
        codecs = self.__dict__.get("_codecs")
        if codecs is None:
            key_codec = faust_codecs.get_codec(self.key_serializer)
            value_codec = faust_codecs.get_codec(self.value_serializer)
            codecs = self.__dict__["_codecs"] = (key_codec.dumps, value_codec.dumps)
        return codecs

    def rows_sent(self, partition: int, last_offset: int) -> None:
        """The broker has this partition's rows up to ``last_offset``: a later start restores from there.

        What Faust's own ``_on_changelog_sent`` does for each record under
        at-least-once processing.
        """
        self.data.set_persisted_offset(TP(self.changelog_topic.get_topic_name(), partition), last_offset)

    def apply_changelog_batch(self, batch: Any) -> None:
        kept = []
        high = self.positions.high
        for event in batch:
            message = event.message
            at = header_offset(message.headers)
            if at is not None:
                tp = message.tp
                if at < high.get(tp, -1):
                    self.positions.skipped += 1
                    log.info("Restore skips a deposed writer's record topic=%s partition=%d offset=%d "
                             "written at=%d after at=%d", tp.topic, tp.partition, message.offset, at, high[tp])
                    continue
                high[tp] = at
            kept.append(event)
        self.before_restore(kept)
        super().apply_changelog_batch(kept)

    def before_restore(self, events: list[Any]) -> None:
        """Called with the changelog records about to be applied to the store (none of them yet)."""


def table(app: faust.App, positions: Positions, name: str, cls: type[PositionedTable] = PositionedTable,
          **kwargs: Any) -> Any:
    """``app.Table(name, **kwargs)``, positioned (a ``cls``)."""
    created = cls(app, name=name, beacon=app.tables.beacon, **kwargs)
    created.positions = positions
    created.staged = {}
    app.tables.add(created)
    return created
