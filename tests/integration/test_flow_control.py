"""A flood bigger than the pending bound: sources pause, pending work and memory stay bounded, nothing is lost."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable

import psutil
import pytest

from tests import harness

BOUND = 2_000
RECORDS = 6 * BOUND
KEYS = 20  # per-key serial work caps completions well below the ingest rate
WORK = 0.03  # seconds per invocation: 20 keys complete at most ~650/s, ingest runs at thousands a second
# Generous: the sources agent checks the bound once per batch (up to 500 records), so a worker
# that keeps its bound stays near BOUND + 500; one that counts only what its consumer has fetched
# reached 5,500 to 46,000 here. Only a design that does not hold the sources misses this.
PENDING_CEILING = 2 * BOUND
RSS_CEILING = 600 * 1024 * 1024  # generous: only a design that buffers the whole flood should cross it
STILL = 120.0  # seconds in which a worker with work to do changed nothing /health shows: it is stuck


def progress(worker: harness.Worker) -> tuple[int, ...]:
    """What /health shows of the work: any change means the worker got on with it."""
    health = worker.get("/health")
    return tuple(int(health[k]) for k in ("completed", "failed", "pending", "backlog", "running"))


def drained(records: int) -> Callable[[tuple[int, ...]], bool]:
    return lambda seen: seen[0] >= records


class Peaks:
    """Samples the worker's RSS and its pending work (/health: pending + backlog) in a thread."""

    def __init__(self, worker: harness.Worker) -> None:
        assert worker.proc is not None
        self.worker = worker
        self.proc = psutil.Process(worker.proc.pid)
        self.rss = self.proc.memory_info().rss
        self.pending = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.rss = max(self.rss, self.proc.memory_info().rss)
            except psutil.Error:
                return
            with contextlib.suppress(OSError, ValueError):
                health = self.worker.get("/health")
                self.pending = max(self.pending, int(health["pending"]) + int(health["backlog"]))
                self.samples += 1
            time.sleep(0.1)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# The wait fails when the worker stops changing anything; this timeout only catches a hang elsewhere.
@pytest.mark.timeout(1800)
def test_flood__six_times_the_bound_to_a_slow_handler_pauses_the_source_holds_pending_and_all_complete(
        workers, app_env):
    worker = workers.new(env={
        "STREAMAPP_SUBSCRIPTIONS": f"{app_env['source']}=Test/Tick",
        "STREAMAPP_MAX_PENDING": str(BOUND),
    })
    with Peaks(worker) as peaks:
        harness.produce(app_env["source"], (
            (f"key{i % KEYS}", json.dumps({"n": i // KEYS, "work": WORK})) for i in range(RECORDS)
        ))
        harness.wait_while_moving(lambda: progress(worker), drained(RECORDS), still=STILL,
                                  what=f"{RECORDS} completions", detail=worker.tail)
    assert peaks.rss < RSS_CEILING, f"worker RSS peaked at {peaks.rss / 2**20:.0f} MiB"
    assert peaks.samples > 10, "/health was hardly ever read: the pending peak says nothing"
    assert peaks.pending <= PENDING_CEILING, f"pending work peaked at {peaks.pending} (bound {BOUND})"
    assert "Pausing sources" in worker.log(), "the flood never paused the source"
    for k in range(KEYS):
        status, body = worker.request("GET", f"/Test/key{k}/Ticks")
        assert (status, body) == (200, {"ticks": RECORDS // KEYS, "last": RECORDS // KEYS - 1}), (k, body)
    assert harness.read_topic(app_env["dead_letters"]) == []


def test_pending_bound__source_pauses_while_queues_are_full_and_resumes_when_they_drain(workers, app_env):
    worker = workers.new(env={
        "STREAMAPP_SUBSCRIPTIONS": f"{app_env['source']}=Test/Tick",
        "STREAMAPP_MAX_PENDING": "100",
    })
    harness.produce(app_env["source"], (
        (f"key{i % 4}", json.dumps({"n": i // 4, "work": 0.005})) for i in range(4000)
    ))
    harness.wait_while_moving(lambda: progress(worker), drained(4000), still=STILL, what="4000 completions",
                              detail=worker.tail)
    log = worker.log()
    assert "Pausing sources" in log and "Resuming sources" in log, "the pending bound never paused the source"
    assert log.index("Pausing sources") < log.rindex("Resuming sources")
    for k in range(4):
        assert worker.request("GET", f"/Test/key{k}/Ticks") == (200, {"ticks": 1000, "last": 999})
