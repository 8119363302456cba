"""A worker started before the broker answers waits for it (STREAMAPP_BROKER_WAIT), then runs.

Also when the broker goes away after that first wait and before Faust's own
producer and consumer bootstrap (a broker killed or restarting then).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from tests import harness


class Gate:
    """Which connections a forwarder passes on: the first ``first`` ones, then none until opened."""

    def __init__(self, first: int) -> None:
        self.first = first
        self.seen = 0
        self.refused = 0  # connections accepted and closed at once (the broker "gone")
        self.open = False

    def admit(self) -> bool:
        self.seen += 1
        if self.open or self.seen <= self.first:
            return True
        self.refused += 1
        return False


@contextlib.contextmanager
def forwarder(port: int, target: tuple[str, int], admit: Callable[[], bool] = lambda: True) -> Iterator[None]:
    """A TCP forwarder on ``port`` to ``target``, running in a thread until the block ends.

    A connection ``admit`` refuses is closed at once, as by a broker going down.
    """
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Event | None = None
    links: set[asyncio.Future[object]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not admit():
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*target)
        links.add(task := asyncio.ensure_future(asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))))
        task.add_done_callback(links.discard)

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        started.set()
        async with server:
            await stop.wait()
        for task in list(links):
            task.cancel()
        await asyncio.gather(*links, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def test_worker_started_before_the_broker_waits_and_then_serves(workers):
    port = harness.free_port()
    host, _, real = harness.bootstrap().partition(":")
    worker = workers.new(env={"STREAMAPP_BROKER_WAIT": "60"}, start=False)
    worker.start(wait=False, broker=f"kafka://127.0.0.1:{port}")  # nothing listens there yet
    harness.wait_for(lambda: "Waiting for the broker" in worker.log(), timeout=30, what="the worker to wait",
                     detail=worker.tail)
    time.sleep(2)
    assert worker.proc is not None and worker.proc.poll() is None, "the worker exited instead of waiting"
    with forwarder(port, (host, int(real))):  # the broker "comes up"
        worker.wait_ready(90)
        assert worker.request("POST", "/Test/boot/Nap", {"tag": "b"}) == (200, {"tag": "b", "count": 1})
        worker.stop()


def test_worker_gives_up_with_a_clear_message_when_the_broker_never_answers(workers):
    worker = workers.new(env={"STREAMAPP_BROKER_WAIT": "3"}, start=False)
    worker.start(wait=False, broker=f"kafka://127.0.0.1:{harness.free_port()}")
    assert worker.proc is not None
    code = worker.proc.wait(timeout=60)
    assert code != 0
    assert "did not answer within 3s" in worker.log(), worker.tail()


def test_worker__broker_gone_between_the_wait_and_faust_bootstrap__waits_instead_of_exiting(workers):
    # The wait's own client gets through (bootstrap connection 1); every later
    # bootstrap (Faust's producer, consumer) finds the broker gone until the
    # gate opens. Clients talk to the broker's advertised address after
    # bootstrapping, so only bootstrap connections pass the forwarder.
    port = harness.free_port()
    host, _, real = harness.bootstrap().partition(":")
    gate = Gate(first=1)
    worker = workers.new(env={"STREAMAPP_BROKER_WAIT": "60"}, start=False)
    with forwarder(port, (host, int(real)), admit=gate.admit):
        worker.start(wait=False, broker=f"kafka://127.0.0.1:{port}")
        proc = worker.proc
        assert proc is not None
        harness.wait_for(lambda: gate.refused >= 2 or proc.poll() is not None, timeout=60,
                         what="a second bootstrap attempt or the worker's exit", detail=worker.tail)
        assert proc.poll() is None, f"the worker exited instead of waiting:\n{worker.tail()}"
        assert "Waiting for the broker" in worker.log()
        gate.open = True  # the broker is back
        worker.wait_ready(90)
        assert worker.request("POST", "/Test/boot/Nap", {"tag": "c"}) == (200, {"tag": "c", "count": 1})
        worker.stop()
