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

Commit order, with this in place (``Consumer._commit_offsets``):
  1. Faust picks, per partition, the highest offset below which every
     command was acked (applied: its rows are staged by then);
  2. ``flush``: the rows staged so far are queued as record batches, the
     net effect of every command applied since the last flush
     (``runtime/changelog.py``, ``faust_adapter.send_rows``; ``track``), and
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
