"""The producer flush a commit relies on, made complete.

Faust commits a partition's offset right after ``producer.flush()``
(``Consumer._commit_offsets``); table writes reach their changelogs through
the producer's buffer (``send_soon``). Faust's ``ProducerBuffer.flush``
returns as soon as one buffered record takes more than 0.1 s to hand to the
Kafka client (waiting for metadata after a broker restart, a leader moving, a
full accumulator), with records still in the buffer; the client's flush then
waits only for what it was handed. The commit that follows passes commands
whose table rows were never sent, and a crash before they are loses them:
the next owner reads on from the committed offset with tables that lack
those rows (invocations it never learns of, journals that restart from an
earlier entry).

``CompleteFlush`` stands between the producer and its buffer (the
transport's ``Producer`` in ``runtime/faust_adapter.py`` routes ``send_soon``
and ``flush`` through it): it remembers every record put into the buffer,
and a flush returns only once
every record put before it began was acknowledged by the broker. Records put
while it waits (the agent keeps applying) are left to the next flush, so a
commit under steady load is not postponed indefinitely. A record the broker
refused fails the flush (Faust then does not commit; ``ChangelogGuard``
stops the worker for a refused changelog record).

``send_rows`` queues the table rows staged since the last flush as record
batches (aiokafka's public batch API), each batch's future tracked here.

Commit order, with this in place (``Consumer._commit_offsets``):
  1. Faust picks, per partition, the highest offset below which every
     command was acked (applied: its rows are staged by then);
  2. ``flush``: the rows staged so far are queued as record batches, the
     net effect of every command applied since the last flush
     (``runtime/changelog.py``, ``flush.send_rows``; ``track``), and
     every record and batch queued so far is acknowledged (acks=all);
  3. the offsets are committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

SLOW_FLUSH = 1.0  # seconds: a flush longer than this is logged
STILL_WAITING = 30.0  # seconds between warnings while records stay unacknowledged


class CompleteFlush:
    def __init__(self, put: Callable[[Any], None], flush: Callable[[], Awaitable[None]]) -> None:
        """``put``: the buffer's put; ``flush``: the producer's own flush (Faust's)."""
        self.unsent: deque[asyncio.Future[Any]] = deque()  # in buffer order
        self._put = put
        self._flush = flush

    def put(self, fut: asyncio.Future[Any]) -> None:
        self._put(fut)
        self.track(fut)

    def track(self, fut: asyncio.Future[Any]) -> None:
        """Wait for ``fut`` too (a record batch queued without the buffer: staged table rows)."""
        self.unsent.append(fut)
        while self.unsent and self.unsent[0].done():
            self.unsent.popleft()

    async def flush(self) -> None:
        """Return once every record buffered before this call is acknowledged; raise if one was refused."""
        pending = [fut for fut in self.unsent if not fut.done()]
        began = asyncio.get_running_loop().time()
        await self._flush()
        left = [fut for fut in pending if not fut.done()]
        while left:
            # asyncio.wait, not await: cancelling this flush must not cancel the records.
            _, pending_left = await asyncio.wait(left, timeout=STILL_WAITING)
            left = list(pending_left)
            waited = asyncio.get_running_loop().time() - began
            if left:
                log.warning("Commit still waiting after %.0fs for %d table records to be acknowledged "
                            "(broker unreachable?)", waited, len(left))
        if pending:
            waited = asyncio.get_running_loop().time() - began
            if waited > SLOW_FLUSH:
                log.info("Commit waited %.1fs for %d records buffered before it", waited, len(pending))
        for fut in pending:
            fut.result()
        while self.unsent and self.unsent[0].done():
            self.unsent.popleft()


def refused_row(topic: str, exc: BaseException) -> None:
    log.critical("Changelog write refused topic=%s error=%r", topic, exc)


async def send_rows(client: Any, staged: list[Any], track: Callable[[asyncio.Future[Any]], None],
                    refused: Callable[[str, BaseException], None]) -> None:
    """Queue staged changelog rows (``changelog.StagedRows``) as record batches, one or more per partition.

    aiokafka's own batch API (``create_batch``/``send_batch``): one future per
    batch, not a Faust message, a future and a callback per record. ``track``
    gets each batch's delivery future (the flush waits for it); when a batch
    is delivered, its table learns the offset of its last record (what
    Faust's ``_on_changelog_sent`` records per row); when the broker refuses
    one, ``refused(topic, error)``.
    """
    for rows in staged:
        batch = client.create_batch()
        count = 0
        for key, value, headers in rows.records:
            if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:  # full
                await _send_batch(client, batch, rows, count, track, refused)
                batch, count = client.create_batch(), 0
                batch.append(timestamp=None, key=key, value=value, headers=headers)  # a first record always fits
            count += 1
        if count:
            await _send_batch(client, batch, rows, count, track, refused)


async def _send_batch(client: Any, batch: Any, rows: Any, count: int,
                      track: Callable[[asyncio.Future[Any]], None],
                      refused: Callable[[str, BaseException], None]) -> None:
    try:
        fut = await client.send_batch(batch, rows.topic, partition=rows.partition)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        refused(rows.topic, exc)
        raise

    def delivered(done: asyncio.Future[Any]) -> None:
        if done.cancelled():
            return
        exc = done.exception()
        if exc is not None:
            refused(rows.topic, exc)
        else:
            rows.table.rows_sent(rows.partition, done.result().offset + count - 1)

    fut.add_done_callback(delivered)
    track(fut)
