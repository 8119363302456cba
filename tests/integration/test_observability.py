"""GET /metrics, /metrics/top-keys, /livez and /readyz on a real worker against the real broker."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import time
from collections import defaultdict
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests import harness

DASHBOARD = "tools/grafana/streamapp-dashboard.json"
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def metrics_text(worker: harness.Worker) -> str:
    status, text = worker.request("GET", "/metrics", timeout=harness.READ_TIMEOUT)
    assert status == 200 and isinstance(text, str), text
    return text


def scrape(worker: harness.Worker) -> Samples:
    """Every sample of the worker's /metrics: name -> labels -> value."""
    text = metrics_text(worker)
    out: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return out


def families(worker: harness.Worker) -> set[str]:
    """The metric names the worker exports (a counter's without ``_total``), with samples or not."""
    return {family.name for family in text_string_to_metric_families(metrics_text(worker))}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name].get(tuple(sorted(labels.items())), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(samples[name].values())


def nap(tag: str, seconds: float = 0.0) -> str:
    return json.dumps({"tag": tag, "seconds": seconds})


def test_metrics__a_known_workload_is_counted_and_timed(workers, app_env):
    worker = workers.new()
    before = scrape(worker)
    assert total(before, "streamapp_invocations_started_total") == 0
    records = [(f"user{i % 5}", nap(f"t{i}")) for i in range(20)]
    harness.produce(app_env["source"], records)
    # One invocation that fails terminally (dead-lettered), one that fails once then
    # succeeds (one retry), one that sleeps long past the test.
    assert worker.request("POST", "/Test/bad/Terminal/send", {"tag": "x"})[0] == 202
    assert worker.request("POST", "/Test/flaky/Flaky/send", {"tag": "f", "failures": 1})[0] == 202
    assert worker.request("POST", "/Test/sleeper/Nap/send", {"tag": "s", "seconds": 3600})[0] == 202

    def settled() -> Samples | None:
        now = scrape(worker)
        done = (value(now, "streamapp_invocations_completed_total", service="Test", handler="Nap") >= 20
                and value(now, "streamapp_invocations_completed_total", service="Test", handler="Flaky") >= 1
                and value(now, "streamapp_invocations_failed_total", service="Test", handler="Terminal") >= 1
                and total(now, "streamapp_sleeping_invocations") >= 1
                and total(now, "streamapp_dead_letters_total") >= 1)
        return now if done else None

    m = harness.wait_for(settled, timeout=90, what="the workload to finish", detail=worker.tail)
    time.sleep(1.0)  # anything counted twice would show up now
    m = scrape(worker)
    nap_labels = {"service": "Test", "handler": "Nap"}
    assert value(m, "streamapp_invocations_started_total", **nap_labels) == 21  # 20 records + the sleeper
    assert value(m, "streamapp_invocations_completed_total", **nap_labels) == 20
    assert value(m, "streamapp_invocations_failed_total", **nap_labels) == 0
    assert value(m, "streamapp_invocations_started_total", service="Test", handler="Flaky") == 1
    assert value(m, "streamapp_invocations_retried_total", service="Test", handler="Flaky") == 1
    assert value(m, "streamapp_invocations_completed_total", service="Test", handler="Flaky") == 1
    assert value(m, "streamapp_invocations_failed_total", service="Test", handler="Terminal") == 1
    assert value(m, "streamapp_invocations_dead_lettered_total", service="Test", handler="Terminal") == 1
    assert m["streamapp_dead_letters_total"] == {(("reason", "TerminalError"),): 1.0}
    assert total(m, "streamapp_invocations_paused_total") == 0
    assert total(m, "streamapp_sleeping_invocations") == 1
    assert total(m, "streamapp_queued_invocations") == 0
    assert value(m, "streamapp_actors_running") == 0
    # Latency: one observation per finished invocation; steps: "before" and "after" of each Nap
    # that completed, "before" of the sleeper.
    assert value(m, "streamapp_invocation_duration_seconds_count", **nap_labels) == 20
    assert value(m, "streamapp_step_duration_seconds_count", **nap_labels) == 41
    assert value(m, "streamapp_timer_lateness_seconds_count") >= 1  # Flaky's retry backoff fired
    assert value(m, "streamapp_records_written_total", topic=app_env["dead_letters"]) == 1
    assert value(m, "streamapp_source_consumer_lag", topic=app_env["source"], partition="0") == 0
    assert total(m, "streamapp_commands_applied_total") >= 23 * 2  # an invoke and an outcome each, at least
    assert total(m, "streamapp_apply_lag") == 0
    assert value(m, "streamapp_partition_activations_total") >= 4  # STREAMAPP_PARTITIONS
    assert value(m, "streamapp_rebalances_total") >= 1
    assert value(m, "streamapp_ready") == 1 and value(m, "streamapp_fenced") == 0
    assert value(m, "streamapp_stall_watchdog_trips_total") == 0
    # The records' topic incarnation came with the fetches that brought them (only the first fetch after
    # the assignment has no answer from before it on its connection, and may need a lookup).
    confirmed = {how: value(m, "streamapp_source_batches_confirmed_total", how=how) for how in ("fetch", "asked")}
    assert confirmed["fetch"] >= 1 and confirmed["asked"] <= 1, confirmed
    # The same workload's keys are not labels anywhere.
    assert not any("user0" in str(labels) for samples in m.values() for labels in samples)
    # What the README lists and the Grafana dashboard queries is what the worker exports.
    exported = families(worker)
    readme = set(re.findall(r"`(streamapp_[a-z_]+)`", (harness.ROOT / "README.md").read_text()))
    dashboard = set(re.findall(r"streamapp_[a-z_]+", (harness.ROOT / DASHBOARD).read_text()))
    assert len(readme) >= 20 and len(dashboard) >= 20
    unknown = {n for n in readme | dashboard if re.sub(r"_(total|bucket)$", "", n) not in exported}
    assert unknown == set(), f"documented or charted, not exported: {sorted(unknown)}"
    # (prometheus_client adds a histogram's creation time as a ``_created`` gauge)
    undocumented = {n for n in exported if n not in {re.sub(r"_total$", "", d) for d in readme}
                    and not n.endswith("_created")}
    assert undocumented == set(), f"exported, missing from the README: {sorted(undocumented)}"


def test_top_keys__the_longest_queues_first_with_their_key(workers, app_env):
    worker = workers.new()
    gate = str(app_env["ledger"]) + ".gate"
    # Each key's first invocation waits at the gate; behind it, 5 queue for "a", 2 for "b".
    held = [("a", json.dumps({"tag": "a0", "gate": gate})), ("b", json.dumps({"tag": "b0", "gate": gate}))]
    queued = [("a", nap(f"a{i}")) for i in range(1, 6)] + [("b", nap(f"b{i}")) for i in range(1, 3)]
    harness.produce(app_env["source"], held + queued)
    try:
        keys = harness.wait_for(
            lambda: (k := worker.get("/metrics/top-keys?n=2")["keys"]) and sum(e["queued"] for e in k) == 7 and k,
            timeout=60, what="7 invocations queued behind two gated ones", detail=worker.tail)
        assert [(e["service"], e["key"], e["queued"]) for e in keys] == [("Test", "a", 5), ("Test", "b", 2)]
        assert worker.get("/metrics/top-keys?n=1")["keys"][0]["key"] == "a"
        assert total(scrape(worker), "streamapp_queued_invocations") == 7
        assert worker.request("GET", "/metrics/top-keys?n=0")[0] == 400
    finally:
        Path(gate).touch()


def test_probes__readyz_503_until_assigned_then_200_livez_503_while_fenced(workers, app_env):
    worker = workers.new(env={"STREAMAPP_SESSION_TIMEOUT": "6"}, start=False)
    worker.start(wait=False)
    seen: list[tuple[int, object]] = []

    def ready() -> bool:
        try:
            seen.append(worker.request("GET", "/readyz", timeout=5))
        except OSError:
            return False  # not listening yet
        return seen[-1][0] == 200

    harness.wait_for(ready, timeout=90, what="/readyz to answer 200", interval=0.05, detail=worker.tail)
    statuses = [status for status, _ in seen]
    assert statuses[0] == 503, f"the first answer came when the worker was ready already: {seen[:3]}"
    assert seen[0][1] == {"ready": False, "live_partitions": seen[0][1]["live_partitions"]}  # type: ignore[index]
    assert seen[-1][1]["ready"] is True  # type: ignore[index]
    assert worker.get("/health")["ready"] is True  # /health unchanged: JSON, 200
    # Live once the stall watchdog ticks (every 0.25 s from the worker's start).
    live = harness.wait_for(lambda: (r := worker.request("GET", "/livez"))[1]["tick_age"] is not None and r,
                            timeout=10, what="the watchdog's first tick")
    assert live[0] == 200 and live[1]["live"] is True, live
    # Frozen past the stall limit (0.8 x the session): on waking the watchdog fences the
    # worker until the group reassigns its partitions, which can take only milliseconds
    # for a group of one. So the probe is sent while the worker is still stopped (the
    # kernel accepts the connection) and is answered among the first things on waking.
    assert worker.proc is not None
    os.killpg(worker.proc.pid, signal.SIGSTOP)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            time.sleep(8)
            probe = pool.submit(worker.request, "GET", "/livez", timeout=30)
            time.sleep(1)
        finally:
            os.killpg(worker.proc.pid, signal.SIGCONT)
        status, body = probe.result()
    assert status == 503 and body["live"] is False, (body, worker.tail(30))
    harness.wait_for(lambda: worker.request("GET", "/livez", timeout=5)[0] == 200, timeout=90,
                     what="liveness back once the group reassigned the partitions", detail=worker.tail)
    harness.wait_for(lambda: worker.request("GET", "/readyz", timeout=5)[0] == 200, timeout=90,
                     what="ready again", detail=worker.tail)
    assert value(scrape(worker), "streamapp_stall_watchdog_trips_total") == 1
