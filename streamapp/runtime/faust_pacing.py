"""Pacing of the Kafka clients under load and at rest, over aiokafka internals (checked with ``faust_adapter.TESTED``).

``AdaptiveWait`` chooses each fetch request's wait (the fetcher's
``_fetch_max_wait_ms``, read when a request is built): short while records
flow, long at rest. ``AdaptiveLinger`` sets the producer's linger (the
accumulator's ``_linger_time``, read when a batch is begun): only while many
records a second are sent. ``faust_adapter`` installs both; why each is
needed is told there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

FETCH_MAX_WAIT_MS = 10  # while records flow
IDLE_FETCH_WAIT_MS = 500  # at rest (aiokafka's own default)
IDLE_AFTER = 1.0  # seconds without fetched records before the worker counts as at rest
LINGER_WINDOW = 0.1  # seconds over which the producer's send rate is counted
# records/s sent through ``Producer.send``: below this a record goes out at once. An invocation sends
# about three (invoke, entry, complete): 200 invocations a second sent ~600, and lingered 2 ms on each
# step (p50 15 ms, of which 3 ms per step; 2 ms per step without), for no throughput a burst would miss.
LINGER_ABOVE = 1_500


class AdaptiveWait:
    """Chooses each fetch request's wait: short while records flow, long at rest."""

    def __init__(self, fetcher: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.fetcher = fetcher
        self.clock = clock
        self.busy_at = clock()
        self.plain = fetcher._get_actions_per_node
        fetcher._get_actions_per_node = self.actions_per_node

    def wait_ms(self) -> int:
        now = self.clock()
        # A fetch brought records a moment ago (those of partitions no agent reads, the
        # table changelogs after their recovery, stay in the fetcher and age: they do not count).
        if any(now - getattr(fetched, "_created", float("-inf")) <= IDLE_AFTER
               for fetched in list(self.fetcher._records.values())):
            self.busy_at = now
        return FETCH_MAX_WAIT_MS if now - self.busy_at <= IDLE_AFTER else IDLE_FETCH_WAIT_MS

    def actions_per_node(self, assignment: Any) -> Any:
        self.fetcher._fetch_max_wait_ms = self.wait_ms()  # read when the fetch requests are built
        return self.plain(assignment)


class AdaptiveLinger:
    """The producer lingers (``producer_linger``) only while it sends many records a second.

    Under load, lingering fills produce requests: fewer requests, and actors
    woken together by one ack send their next commands together (one outbox
    record). At a low rate it only adds its length to every step of every
    invocation: then a record goes out at once (aiokafka still groups what
    is appended while a request to the broker is in flight). The rate is
    counted over ``LINGER_WINDOW``; the linger applies to batches begun after.
    """

    def __init__(self, linger: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.linger = linger
        self.clock = clock
        self.since = clock()
        self.count = 0
        self.current = 0.0

    def sent(self, client: Any) -> None:
        self.count += 1
        now = self.clock()
        if now - self.since < LINGER_WINDOW:
            return
        self.current = self.linger if self.count / (now - self.since) >= LINGER_ABOVE else 0.0
        self.since, self.count = now, 0
        accumulator = getattr(client, "_message_accumulator", None)
        if accumulator is not None:
            accumulator._linger_time = self.current  # read when a batch is begun
