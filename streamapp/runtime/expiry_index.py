"""The expiry index: finished invocations by finish time, kept on this worker only (no changelog).

``expiry`` (``runtime/expiry.py``) drops outcomes past the results
retention, oldest first. It reads this index, one RocksDB per partition
beside the tables (``<table dir>/expiry-index/p<N>``):

    "<finish time, ms, 15 digits>/<id>" -> id     (``store.expiry_key``)
    "~swept"                              -> how far the results rows this
                                             index did not see written were
                                             indexed (``expiry._sweep_unindexed``)

Every entry follows from a results row (its id and its ``finished``), so the
index is not written to a changelog: it was one changelog record per
invocation. It is kept in step with the local ``results`` store instead:

  1. the owner indexes an outcome in the apply that writes it (``finish``)
     and drops both in the apply that expires it;
  2. a results row that comes through the changelog (a restore, a standby)
     is indexed as it is applied, from the ``streamapp.finished`` header
     its record carries (``ResultsTable``; a record of an earlier version
     without it is decoded); a tombstone takes the entry of the row it
     deletes with it;
  3. rows the index never saw written (tables written before it existed, or
     an index missing beside kept tables) are found by a sweep over the
     results rows, a bounded number per expire command, once per partition
     of a new index; its cursor is the ``~swept`` row.

An entry without its results row (a tombstone applied while the index was
not looking) is dropped by the next expire command that reaches it. The
index lives under the table dir, so an unclean stop drops it with the
tables, and the restore rebuilds both (2, 3). A clean stop flushes and
closes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import rocksdict
from faust import streams

SWEPT = "~swept"  # sorts after every entry ("<digits>/<id>")


class LocalIndex:
    """The expiry index as the partition state machine uses a table, plus the restore's explicit writes."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory  # set before first use (the table dir is known once the app is built)
        self._dbs: dict[int, rocksdict.Rdict] = {}

    # -- as a table: the partition is the command's being applied (Faust's current event) --------
    def get(self, key: str, default: Any = None) -> Any:
        value = self._db(_current_partition()).get(key.encode())
        return default if value is None else value.decode()

    def __setitem__(self, key: str, value: Any) -> None:
        self._db(_current_partition()).put(key.encode(), str(value).encode())

    def put(self, key: str, value: Any, raw: bytes | None = None) -> None:
        self[key] = value

    def __delitem__(self, key: str) -> None:
        self._db(_current_partition()).delete(key.encode())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._db(_current_partition()).get(key.encode()) is not None

    # -- by partition ---------------------------------------------------------------------------
    def keys(self, partition: int, start: str | None = None) -> Iterator[str]:
        """Entries of ``partition`` in key order (finish time, then id), from ``start`` (inclusive)."""
        db = self._db(partition)
        for raw in db.keys(from_key=None if start is None else start.encode()):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            if key == SWEPT:
                continue
            yield key

    def add(self, partition: int, key: str, inv_id: str) -> None:
        """Index ``inv_id`` under ``key`` (``store.expiry_key``) in ``partition``."""
        self._db(partition).put(key.encode(), inv_id.encode())

    def remove(self, partition: int, key: str) -> None:
        self._db(partition).delete(key.encode())

    def swept(self, partition: int) -> str | bool | None:
        """The sweep's cursor: None (not begun), the last results id indexed, or True (done)."""
        raw = self._db(partition).get(SWEPT.encode())
        return None if raw is None else json.loads(raw)

    def set_swept(self, partition: int, cursor: str | bool) -> None:
        self._db(partition).put(SWEPT.encode(), json.dumps(cursor).encode())

    # -- life -----------------------------------------------------------------------------------
    def _db(self, partition: int) -> rocksdict.Rdict:
        db = self._dbs.get(partition)
        if db is None:
            if self.directory is None:
                raise RuntimeError("the expiry index has no directory yet")
            self.directory.mkdir(parents=True, exist_ok=True)
            options = rocksdict.Options(raw_mode=True)
            options.create_if_missing(True)
            options.set_write_buffer_size(1024 * 1024)  # small rows: a megabyte holds ~15,000 entries
            db = rocksdict.Rdict(str(self.directory / f"p{partition}"), options=options)
            self._dbs[partition] = db
        return db

    def drop(self, partition: int) -> None:
        """Delete ``partition``'s index, entries and sweep cursor (the next use starts a new one)."""
        db = self._db(partition)
        db.close()
        del self._dbs[partition]
        assert self.directory is not None
        rocksdict.Rdict.destroy(str(self.directory / f"p{partition}"))

    def close(self) -> None:
        """Flush every open partition's memtable to its files and close it (a clean stop)."""
        for db in self._dbs.values():
            db.flush(wait=True)
            db.close()
        self._dbs.clear()


def _current_partition() -> int:
    event = streams.current_event()
    if event is None:
        raise TypeError("the expiry index is written outside the invocations agent")
    return int(event.message.partition)
