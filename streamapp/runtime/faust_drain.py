"""Faust's record delivery loop without four tasks per record (its internals; checked against ``faust_adapter.TESTED``).

Every record a worker consumes (source records, commands read back, every
changelog record of a restore) goes through Faust's
``Consumer._drain_messages``, which hands it to the conductor with
``await self.wait_first(callback(message), self.suspend_flow.wait())``:
four tasks (the delivery, the flow event, the consumer's stopped and crashed
events), an ``asyncio.wait`` and three cancellations for each record, so
that a delivery blocked on a full stream buffer can be abandoned when a
rebalance suspends the flow. That was most of the consume path's cost, and
a restore's: about 40 µs a record.

A delivery blocks only when the app's flow is suspended, the conductor's
handler map is being rebuilt (a rebalance holds its lock), the producer's
buffer is over its limit (the conductor waits for it to ebb) or a queue it
puts into is full. ``DrainingConsumer._drain_messages`` is Faust's loop,
except that a record none of these can hold up is delivered with a plain
``await`` (it completes without yielding, as the waited-for task would
have); any other record goes through ``wait_first`` as before. The loop
still yields to the event loop every ``YIELD_EVERY`` records and before
each fetch, as Faust's does.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING

YIELD_EVERY = 100  # records delivered between two yields to the loop (Faust's)


class DrainingConsumer:
    """Mixed into the runtime's Faust consumer (``faust_adapter.Consumer``)."""

    app: Any
    callback: Any
    getmany: Any
    suspend_flow: asyncio.Event
    _stopped: Any
    _read_offset: Any
    _commit_every: int | None
    _n_acked: int
    diag: Any
    log: Any
    consumer_stopped_errors: Any
    transport: Any
    wait_first: Any
    sleep: Any
    commit: Any
    _add_gap: Any
    handed_over: dict[Any, int]

    def never_blocks(self, message: Any) -> bool:
        """Whether delivering ``message`` completes without waiting (see the module's doc)."""
        app = self.app
        if self.suspend_flow.is_set() or not app.flow_control.is_active() or app.topics._tp_to_callback_lock.locked():
            return False
        buffer = app.producer.buffer
        if buffer.size > buffer.max_messages:
            return False
        channels = app.topics._tp_index.get(message.tp)
        return bool(channels) and not any(channel.queue.full() for channel in channels)

    async def _drain_messages(self, fetcher: Any) -> None:  # Faust's, with the delivery above
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        handed = self.handed_over = {}  # tp -> offset of the last record handed to the streams (no seek moves it)
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        never_blocks = self.never_blocks
        since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if self.should_stop:  # type: ignore[attr-defined]
                    continue
                async for tp, message in ait:
                    since_yield += 1
                    if since_yield > YIELD_EVERY:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and offset < r_offset:
                        continue  # Faust drops a record below the read offset (logged at its dev level)
                    gap = offset - (r_offset or 0)
                    if gap > 1 and r_offset and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if never_blocks(message):
                        await callback(message)
                    else:
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    set_read_offset(tp, offset)
                    handed[tp] = offset
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)
