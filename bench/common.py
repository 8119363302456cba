"""What the scenarios share: the run's temp dir and processes, health polling, RSS sampling, results.

A ``Run`` owns everything a benchmark run starts (workers, baseline
processes, topics, the temp dir) and ``close()`` stops and removes all of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests import harness

log = logging.getLogger("bench")
ROOT = harness.ROOT
SERVICES = "bench.services:services"


# -- results -----------------------------------------------------------------
@dataclasses.dataclass
class Figure:
    """One measured number, with its baseline and the issue's target when there is one."""

    name: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: float | None = None
    higher_is_better: bool = False

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    def verdict(self) -> str:
        if self.target is None:
            return ""
        if self.value is None:
            return "not measured"
        ok = self.value >= self.target if self.higher_is_better else self.value <= self.target
        if ok:
            return "met"
        miss = abs(self.value - self.target)
        return f"missed by {fmt(miss)} {self.unit} ({100 * miss / self.target:.0f}%)"


@dataclasses.dataclass
class Result:
    scenario: str
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    figures: list[Figure] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)  # non-empty: the scenario failed
    seconds: float = 0.0
    # 1, 5 and 15-minute load averages before and after (is the machine shared?); set for every scenario
    load: tuple[list[float], list[float]] | None = None

    def add(self, name: str, value: float | None, unit: str, **kw: Any) -> Figure:
        figure = Figure(name, value, unit, **kw)
        self.figures.append(figure)
        return figure

    @property
    def ok(self) -> bool:
        return not self.problems


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100), interpolating between closest ranks."""
    data = sorted(values)
    if not data:
        return None
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


# -- polling -------------------------------------------------------------------
class Health:
    """GET /health over one kept-alive connection (cheap enough to poll every few ms)."""

    def __init__(self, worker: harness.Worker) -> None:
        self.worker = worker
        self.conn: http.client.HTTPConnection | None = None

    def get(self) -> dict[str, Any] | None:
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.worker.web_port, timeout=10)
            self.conn.request("GET", "/health")
            resp = self.conn.getresponse()
            body = resp.read()
            return json.loads(body) if resp.status == 200 else None
        except (OSError, http.client.HTTPException, ValueError):
            self.close()
            return None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def totals(healths: list[Health]) -> dict[str, int]:
    """Counters summed over workers (a worker not answering counts zero)."""
    out = {"completed": 0, "failed": 0, "running": 0, "pending": 0, "sleeping": 0}
    for h in healths:
        body = h.get() or {}
        for name in out:
            out[name] += int(body.get(name, 0))
    return out


def poll(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05,
         alive: Callable[[], None] | None = None, detail: Callable[[], object] | None = None) -> float:
    """Poll until ``check()``; return the wall time it first held. Raise ``BenchError`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return time.time()
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            extra = f" (last: {detail()})" if detail is not None else ""
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


class BenchError(Exception):
    """A scenario could not complete (a timeout, a lost invocation, a dead process)."""


class RssSampler:
    """Samples the resident set size of some processes in a thread; keeps the peak per process."""

    def __init__(self, pids: list[int], interval: float = 0.2) -> None:
        self.procs = [psutil.Process(pid) for pid in pids]
        self.interval = interval
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> dict[int, int]:
        out = {}
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                out[proc.pid] = proc.memory_info().rss
                self.peak[proc.pid] = max(self.peak[proc.pid], out[proc.pid])
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def peak_mb(self) -> float:
        return max(self.peak.values()) / 2**20


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# -- the run -------------------------------------------------------------------
class Run:
    """Owns what one benchmark run starts; ``close()`` stops and removes all of it."""

    def __init__(self, smoke: bool, keep: bool = False, profile: bool = False) -> None:
        self.smoke = smoke
        self.keep = keep
        self.profile = profile  # py-spy the throughput worker
        self.memo: dict[str, Any] = {}  # figures one scenario lends another (scale-out reuses throughput's)
        self.base = Path(tempfile.mkdtemp(prefix="streamapp-bench-"))
        self.factories: list[harness.WorkerFactory] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.names: list[str] = []  # topics and app ids (prefixes of Faust's topics) to delete

    def topic(self, prefix: str, partitions: int = 1) -> str:
        name = harness.unique(f"bench-{prefix}")
        harness.create_topics([name], partitions)
        self.names.append(name)
        return name

    def workers(self, name: str, subscriptions: dict[str, str], env: dict[str, str] | None = None
                ) -> harness.WorkerFactory:
        """A worker factory for one streamapp app (own app id, dead-letter topic, ledger, gate)."""
        app_id = harness.unique(f"bench-{name}")
        self.names.append(app_id)
        base = self.base / app_id
        base.mkdir()
        env = {
            "STREAMAPP_SUBSCRIPTIONS": ",".join(f"{t}={target}" for t, target in subscriptions.items()),
            "STREAMAPP_SERVICES": SERVICES,
            "STREAMAPP_DEAD_LETTER_TOPIC": f"{app_id}-dead-letters",
            "BENCH_LEDGER": str(base / "ledger.jsonl"),
            "BENCH_GATE": str(base / "gate"),
            **(env or {}),
        }
        factory = harness.WorkerFactory(base, app_id, env)
        self.factories.append(factory)
        return factory

    def spawn(self, args: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
        """Start a baseline process (own session, output to a log file under the temp dir)."""
        with (self.base / log_name).open("ab") as out:
            proc = subprocess.Popen(
                args, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def log_tail(self, log_name: str, n: int = 30) -> str:
        path = self.base / log_name
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)

    def stop_workers(self) -> None:
        """Stop every worker and baseline started so far (between scenarios, so they do not compete)."""
        for factory in self.factories:
            factory.stop_all()
        for proc in self.procs:
            self.stop(proc)

    def close(self) -> None:
        self.stop_workers()
        with contextlib.suppress(Exception):
            harness.run_async(self._delete_topics())
        if self.keep:
            print(f"kept {self.base}", file=sys.stderr)
        else:
            shutil.rmtree(self.base, ignore_errors=True)

    async def _delete_topics(self) -> None:
        admin = AIOKafkaAdminClient(**harness.kafka_options())
        await admin.start()
        try:
            existing = await admin.list_topics()
            doomed = [t for t in existing if any(t == n or t.startswith(n + "-") for n in self.names)]
            if doomed:
                await admin.delete_topics(doomed)
        finally:
            await admin.close()


async def _uncommitted(group: str, topics: list[str]) -> int:
    """Records of ``topics`` past the consumer group's committed offsets (a partition never committed counts whole)."""
    admin = AIOKafkaAdminClient(**harness.kafka_options())
    consumer = AIOKafkaConsumer(**harness.kafka_options(), enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        await consumer.topics()
        await consumer._client.force_metadata_update()  # topics() alone leaves partitions unknown
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        if {tp.topic for tp in tps} != set(topics):
            raise BenchError(f"topics not found: {sorted(set(topics) - {tp.topic for tp in tps})}")
        ends = await consumer.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        return sum(end - (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0)
                   for tp, end in ends.items())
    finally:
        await consumer.stop()
        await admin.close()


def uncommitted(group: str, topics: list[str]) -> int:
    count: int = harness.run_async(_uncommitted(group, topics))
    return count


class FaustBaseline:
    """A ``faust -A bench.baseline_faust worker`` process on one topic (see bench/baseline_faust.py)."""

    def __init__(self, run: Run, topic: str, mode: str) -> None:
        self.run = run
        self.port = harness.free_port()
        app_id = harness.unique(f"bench-faust-{mode}")
        run.names.append(app_id)
        self.log_name = f"{app_id}.log"
        faust_bin = str(Path(sys.executable).parent / "faust")
        self.proc = run.spawn(
            [faust_bin, "-A", "bench.baseline_faust", "worker", "-l", "warn"],
            {"BENCH_APP_ID": app_id, "BENCH_TOPIC": topic, "BENCH_MODE": mode,
             "BENCH_BROKER": harness.broker_url(), "BENCH_WEB_PORT": str(self.port),
             "BENCH_DATADIR": str(run.base / app_id)},
            self.log_name,
        )
        self.conn: http.client.HTTPConnection | None = None

    def stats(self) -> dict[str, Any] | None:
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self.conn.request("GET", "/stats/")
            resp = self.conn.getresponse()
            body = resp.read()
            return json.loads(body) if resp.status == 200 else None
        except (OSError, http.client.HTTPException, ValueError):
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return None

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"Faust baseline exited with {self.proc.returncode}:\n{self.run.log_tail(self.log_name)}")

    def wait_ready(self, timeout: float = 90) -> None:
        poll(lambda: bool((self.stats() or {}).get("assigned")), timeout=timeout, what="the Faust baseline",
             interval=0.2, alive=self.alive)

    def wait_count(self, n: int, timeout: float, interval: float = 0.05) -> dict[str, Any]:
        poll(lambda: (self.stats() or {}).get("count", 0) >= n, timeout=timeout,
             what=f"the Faust baseline to handle {n} records", interval=interval, alive=self.alive)
        return self.stats() or {}

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.run.stop(self.proc)


def alive(*workers: harness.Worker) -> Callable[[], None]:
    """A check for ``poll``: fail at once if a worker process died."""

    def check() -> None:
        for w in workers:
            if w.proc is not None and w.proc.poll() is not None:
                raise BenchError(f"worker exited with {w.proc.returncode}:\n{w.tail()}")

    return check
