"""A flood bigger than the pending bound: sources pause, memory stays bounded, nothing is lost."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import psutil
import pytest

from tests import harness

RECORDS = 50_000
KEYS = 20  # per-key serial work caps completions well below the ingest rate
RSS_CEILING = 600 * 1024 * 1024  # generous: only a design that buffers the whole flood should cross it
STILL = 120.0  # seconds in which a worker with work to do changed nothing /health shows: it is stuck


def progress(worker: harness.Worker) -> tuple[int, ...]:
    """What /health shows of the work: any change means the worker got on with it."""
    health = worker.get("/health")
    return tuple(int(health[k]) for k in ("completed", "failed", "pending", "backlog", "running"))


def drained(records: int) -> Callable[[tuple[int, ...]], bool]:
    return lambda seen: seen[0] >= records


# How long the flood takes depends on the machine: 4 to 13 minutes on a 2-core box with
# other runs on it (load 4 to 13), longer when its whole backlog of commands is applied
# before the first completion. The wait fails when the worker stops changing anything;
# this timeout only catches a hang elsewhere.
@pytest.mark.timeout(3600)
def test_flood__50k_records_to_a_slow_handler_pause_the_source_and_all_complete(workers, app_env):
    worker = workers.new(env={
        "STREAMAPP_SUBSCRIPTIONS": f"{app_env['source']}=Test/Tick",
        "STREAMAPP_MAX_PENDING": "2000",
    })
    assert worker.proc is not None
    proc = psutil.Process(worker.proc.pid)
    peak = [proc.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        harness.produce(app_env["source"], (
            (f"key{i % KEYS}", json.dumps({"n": i // KEYS, "work": 0.01})) for i in range(RECORDS)
        ))
        harness.wait_while_moving(lambda: progress(worker), drained(RECORDS), still=STILL,
                                  what=f"{RECORDS} completions", detail=worker.tail)
    finally:
        stop.set()
        sampler.join()
    assert peak[0] < RSS_CEILING, f"worker RSS peaked at {peak[0] / 2**20:.0f} MiB"
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
