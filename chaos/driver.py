"""One chaos run: set up, run the workload under the fault plan, settle, collect, check, report.

    ChaosRun(args): setup() -> run_faults() -> settle() -> collect() -> cleanup()  (chaos.main drives it)

Phases, and what each waits for:

  1. setup     a private broker (free ports, temp data dir), the topics, the downstream
               backend (journaled), the recording proxy, the initial workers (ready)
  2. faults    the producer paces M events over part of ``--duration`` while the
               seeded plan (``faults.plan``) is executed on time; a worker that exits
               on its own is recorded as a crash and started again
  3. settle    every fault undone, the producer done, then until every event has its
               feed update and no worker holds an unfinished invocation, or ``--settle``
               seconds pass (what is left then counts as stuck or lost)
  4. check     evidence from the backend, the topics, the proxy and the worker logs
               (``checks.check``); one summary line; on a violation the details, an
               evidence file and the seed to reproduce, exit 1

Everything started is stopped in ``finally`` (by PID), also on errors and
SIGTERM/SIGINT. The work dir (logs, broker data, ``calls.jsonl``, ``report.txt``)
is removed after a clean run unless ``--keep``; it is kept after a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from chaos import checks, faults, logs
from chaos.cluster import Broker, BrokerCluster, Downstream, Worker, http_json, snapshot_code
from chaos.proxy import RecordingProxy
from chaos.steps import Disturbance
from chaos.topics import create_topics, read_topic
from chaos.workload import BAD_HEADER, REASONS, Producer, bad_records
from streamapp.runtime import commands


def say(text: str) -> None:
    print(text, flush=True)


class StopRequestedError(Exception):
    """SIGTERM/SIGINT: stop the run, clean up."""


class ChaosRun:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.seed: int = args.seed
        self.workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix=f"chaos-{self.seed}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Client libraries (the producer's aiokafka) log to a file, not over the run's output.
        handler = logging.FileHandler(self.workdir / "driver.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
        self.app_id = f"chaos-{self.seed}-{uuid.uuid4().hex[:6]}"
        self.source_topic = f"{self.app_id}-posts"
        self.dead_letter_topic = f"{self.app_id}-dead-letters"
        self.broker: Broker | BrokerCluster | None = None
        self.downstream: Downstream | None = None
        self.proxy: RecordingProxy | None = None
        self.producer: Producer | None = None
        self.workers: dict[str, Worker] = {}
        self.faults_done = 0
        self.fault_log: list[str] = []
        self.crashes: list[str] = []
        self.events: list[Disturbance] = []  # what the run did to the cluster, and the crashes (evidence)
        self.internal: list[Any] = []  # the internal topic's records, read once at the end
        self.stopping: list[tuple[float, Worker]] = []  # clean stops to enforce: (deadline, worker)
        self.t0 = 0.0
        self._last_progress = 0.0
        self.code_version = ""

    # -- helpers -------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.t0 if self.t0 else 0.0

    def log(self, text: str) -> None:
        line = f"[chaos +{self.elapsed():7.1f}s] {text}"
        self.fault_log.append(line)
        say(line)

    def downstream_url_for(self, incarnation: str) -> str:
        assert self.proxy is not None
        return self.proxy.url_for(incarnation)

    def start_worker(self, worker: Worker) -> str:
        assert self.broker is not None
        return worker.start(self.broker.url, self.downstream_url_for(f"{worker.slot}.{worker.starts + 1}"))

    def ready_workers(self) -> list[Worker]:
        return [w for w in self.workers.values() if (h := w.health()) is not None and h.get("ready")]

    # -- phase 1 ---------------------------------------------------------------------
    def setup(self) -> None:
        a = self.args
        code = self.workdir / "code"
        self.code_version = snapshot_code(code)
        if a.brokers > 1:
            self.broker = BrokerCluster(self.workdir / "broker", self.workdir / "broker.log", a.brokers)
        else:
            self.broker = Broker(self.workdir / "broker", self.workdir / "broker.log")
        say(f"chaos: seed={self.seed} workdir={self.workdir} app_id={self.app_id} code={self.code_version}")
        say(f"chaos: starting a private broker{f' cluster of {a.brokers}' if a.brokers > 1 else ''} on "
            f"{self.broker.bootstrap} (controller {self.broker.controllers})")
        self.broker.start()
        self.broker.wait_up()
        create_topics(self.broker.bootstrap, [self.source_topic, self.dead_letter_topic], replicas=min(3, a.brokers))
        self.downstream = Downstream(code, self.workdir / "downstream.log", "--pending-polls",
                                     str(a.pending_polls), "--journal", str(self.workdir / "downstream.jsonl")).start()
        self.proxy = RecordingProxy(self.downstream.url, self.workdir / "calls.jsonl").start()
        env = {
            "STREAMAPP_SUBSCRIPTIONS": f"{self.source_topic}=UserFeed/ProcessPost",
            "STREAMAPP_DEAD_LETTER_TOPIC": self.dead_letter_topic,
            "STREAMAPP_MODERATION_POLL_INTERVAL": str(a.poll_interval),
            "STREAMAPP_SESSION_TIMEOUT": str(a.session_timeout),
            "STREAMAPP_PARTITIONS": str(a.partitions),
        }
        for i in range(a.max_workers):
            slot = f"w{i}"
            self.workers[slot] = Worker(slot, self.app_id, code, self.workdir / slot, self.workdir / f"{slot}.log", env)
        for worker in list(self.workers.values())[: a.workers]:
            self.start_worker(worker)
        deadline = time.monotonic() + 120
        while len(self.ready_workers()) < a.workers:
            for worker in self.workers.values():
                if worker.crashed():
                    raise RuntimeError(f"{worker.incarnation} exited during start-up; see {worker.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError("the initial workers did not become ready in 120 s")
            time.sleep(0.5)
        say(f"chaos: {a.workers} workers ready; downstream {self.downstream.url} behind proxy {self.proxy.url}")

    # -- phase 2 ---------------------------------------------------------------------
    def run_faults(self, plan: list[faults.Action], workload: list[Any]) -> None:
        assert self.broker is not None
        a = self.args
        self.producer = Producer(self.broker.bootstrap, self.source_topic, workload,
                                 window=a.duration * a.produce_fraction, bad=bad_records(a.bad_records),
                                 seed=self.seed).start()
        self.t0 = time.monotonic()
        for action in plan:
            while self.elapsed() < action.at:
                self.housekeeping()
                time.sleep(min(0.1, max(0.0, action.at - self.elapsed())))
            self.execute(action)
        while self.elapsed() < a.duration:
            self.housekeeping()
            time.sleep(0.1)
        self.log(f"fault phase over: {self.faults_done} faults")

    def event(self, kind: str, target: str | None, effective: bool = True, detail: str = "") -> None:
        self.events.append(Disturbance(time.time(), kind, target, effective, detail))

    def execute(self, action: faults.Action) -> None:
        assert self.broker is not None
        worker = self.workers.get(action.target or "")
        kind = action.kind
        if action.is_fault:
            self.faults_done += 1
        label = f"fault #{self.faults_done} {action}" if action.is_fault else f"undo {action}"
        if kind == "kill_broker":
            effective = self.broker.pid() is not None or self.broker.starting()
        elif kind in ("restart_worker", "add_worker", "start_broker") or worker is None:
            effective = True
        elif kind == "resume_worker":
            effective = worker.alive() and worker.paused
        else:  # kill, pause, remove: only a running worker
            effective = worker.alive() and not (kind == "pause_worker" and worker.paused)
        self.event(kind, (worker.incarnation if kind not in ("restart_worker", "add_worker") else worker.slot)
                   if worker else None, effective)
        if kind == "kill_broker":
            self.broker.wait_up()
            pid = self.broker.kill()
            node = f" (node {self.broker.down})" if isinstance(self.broker, BrokerCluster) else ""
            self.log(f"{label}: SIGKILL broker pid {pid}{node}")
        elif kind == "start_broker":
            node = self.broker.down if isinstance(self.broker, BrokerCluster) else None
            self.broker.start()
            self.log(f"{label}: kafka.sh {f'start-node {node}' if node else 'up'} on the same data dir")
        elif worker is None:
            raise AssertionError(f"no worker slot {action.target}")
        elif kind == "kill_worker":
            pid = worker.proc.pid if worker.proc else None
            was = worker.incarnation
            if not worker.alive():
                self.log(f"{label}: {was} was not running")
            worker.kill()
            self.log(f"{label}: SIGKILL {was} (pid {pid})")
        elif kind in ("restart_worker", "add_worker"):
            if worker.alive():  # a clean stop still in progress
                self.log(f"{label}: {worker.incarnation} still stopping; SIGKILL it first")
                worker.kill()
            inc = self.start_worker(worker)
            self.log(f"{label}: started {inc} (pid {worker.proc.pid if worker.proc else '?'})")
        elif kind == "pause_worker":
            worker.pause()
            self.log(f"{label}: SIGSTOP {worker.incarnation} (session timeout {self.args.session_timeout:g}s)")
        elif kind == "resume_worker":
            worker.resume()
            self.log(f"{label}: SIGCONT {worker.incarnation}")
        elif kind == "remove_worker":
            worker.terminate()
            self.stopping.append((time.monotonic() + 30.0, worker))
            self.log(f"{label}: SIGTERM {worker.incarnation} (clean stop, rebalance)")
        else:
            raise AssertionError(f"unknown action {kind}")

    def housekeeping(self) -> None:
        assert self.broker is not None
        if self.broker.starter is not None:
            try:
                if not self.broker.starting():
                    self.log(f"broker up again ({self.broker.started()})")
            except RuntimeError as exc:
                self.log(f"broker start failed ({exc}); starting it again")
                self.broker.start()
        for deadline, worker in list(self.stopping):
            if not worker.alive():
                self.stopping.remove((deadline, worker))
            elif time.monotonic() > deadline:
                self.stopping.remove((deadline, worker))
                self.log(f"{worker.incarnation} did not stop within 30 s of SIGTERM; SIGKILL")
                self.event("kill_worker", worker.incarnation, detail="did not stop within 30 s of SIGTERM")
                worker.kill()
        for worker in self.workers.values():
            if worker.crashed():
                assert worker.proc is not None
                when = "after it was ready" if worker.was_ready else "before it was ready"
                what = (f"{worker.incarnation} (pid {worker.proc.pid}) exited on its own with "
                        f"{worker.proc.returncode} {when}{last_error(worker.log_text(), worker.incarnation)}")
                self.crashes.append(what)
                self.event("crash", worker.incarnation, detail=what)
                worker.expected_exit = True
                self.log(f"CRASH: {what}; starting it again")
                self.start_worker(worker)
        if time.monotonic() - self._last_progress > 15:
            self._last_progress = time.monotonic()
            self.progress()

    def progress(self) -> None:
        assert self.downstream is not None and self.producer is not None and self.broker is not None
        status, records = http_json(self.downstream.url + "/records", timeout=10)
        feeds = len(records["feedUpdates"]) if status == 200 else "?"
        states = []
        for w in self.workers.values():
            if w.paused:
                states.append(f"{w.incarnation}(paused)")
            elif w.alive():
                health = w.health() or {}
                parts = "".join(str(p) for p in health.get("live_partitions", []))
                states.append(f"{w.incarnation}[{parts}]{'' if health.get('ready') else '(not ready)'}")
        broker = "starting" if self.broker.starter is not None else ("up" if self.broker.pid() else "down")
        self.log(f"progress: produced={self.producer.acked}/{len(self.producer.events)} "
                 f"bad={self.producer.acked_bad} feed_updates={feeds} "
                 f"workers={','.join(states) or '-'} broker={broker}")

    # -- phase 3 ---------------------------------------------------------------------
    def settle(self) -> None:
        assert self.broker is not None and self.producer is not None and self.downstream is not None
        a = self.args
        for worker in self.workers.values():
            if worker.paused:
                self.event("resume_worker", worker.incarnation, detail="settle")
                worker.resume()
        self.broker.wait_up()
        running = [w for w in self.workers.values() if w.alive()]
        if not running:
            self.event("restart_worker", "w0", detail="settle: no worker left running")
            inc = self.start_worker(self.workers["w0"])
            self.log(f"no worker left running; started {inc}")
        deadline = time.monotonic() + a.settle
        self.log(f"settling: waiting up to {a.settle:g}s for the producer and every invocation to finish")
        while not self.producer.done() and time.monotonic() < deadline:
            self.housekeeping()
            time.sleep(0.5)
        if not self.producer.done():
            self.producer.stop()
            self.log("the producer did not finish in time")
        if self.producer.error is not None:
            raise RuntimeError(f"the producer failed: {self.producer.error!r}")
        expected = self.producer.acked
        quiet_since = None
        while time.monotonic() < deadline:
            self.housekeeping()
            status, records = http_json(self.downstream.url + "/records", timeout=10)
            done = status == 200 and len(records["feedUpdates"]) >= expected
            ready = self.ready_workers()
            alive = [w for w in self.workers.values() if w.alive()]
            unfinished = None
            if ready and len(ready) == len(alive):
                code, body = http_json(ready[0].url + "/invocations", timeout=20)
                unfinished = len(body["invocations"]) if code == 200 else None
            if done and unfinished == 0 and self.producer.acked_bad:  # and the bad records' dead letters
                done = len(read_topic(self.broker.bootstrap, self.dead_letter_topic)) >= self.producer.acked_bad
            if done and unfinished == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= 3.0:  # let stray (zombie) calls land too
                    self.log("quiescent: every event has a feed update and nothing is unfinished")
                    return
            else:
                quiet_since = None
            time.sleep(1.0)
        self.log(f"settle deadline ({a.settle:g}s) passed; checking what there is")

    # -- phase 4 ---------------------------------------------------------------------
    def collect(self) -> checks.Evidence:
        assert self.broker is not None and self.downstream is not None and self.proxy is not None
        for_record, partition_for, topic_id = engine_functions(self.workdir / "code")
        source = []
        source_id = topic_id(self.broker.bootstrap, self.source_topic)  # ids name the topic's incarnation
        bad = []
        for rec in read_topic(self.broker.bootstrap, self.source_topic):
            kind = rec.headers.get(BAD_HEADER)
            if kind is not None:  # a malformed record the driver interleaved: it must be dead-lettered
                bad.append(checks.BadSource(rec.offset, kind.decode(), REASONS[kind.decode()]))
                continue
            value = json.loads(rec.value or b"null")
            source.append(checks.SourceEvent(rec.offset, (rec.key or b"").decode(), value["content"],
                                             for_record(self.app_id, rec.topic, source_id, rec.partition,
                                                        rec.offset)))
        dead = []
        for rec in read_topic(self.broker.bootstrap, self.dead_letter_topic):
            h = {k: v.decode("utf-8", "replace") for k, v in rec.headers.items()}
            offset = h.get("streamapp.source.offset")
            dead.append(checks.DeadLetter((rec.key or b"").decode("utf-8", "replace") if rec.key else None,
                                          h.get("streamapp.error", ""), h.get("streamapp.invocation"),
                                          int(offset) if offset and offset.isdigit() else None, rec.timestamp))
        records = self.downstream.records()
        complete_posts = {f["postId"] for f in records["feedUpdates"]}
        complete = {checks.inv_of_key(p["idempotencyKey"]) for p in records["posts"] if p["postId"] in complete_posts}
        status = self.engine_status([e.inv for e in source if e.inv not in complete])
        activations = []
        for worker in self.workers.values():
            activations += logs.activations_from_log(worker.log_text(), worker.slot, worker.incarnation_pids)
        self.internal = read_topic(self.broker.bootstrap, f"{self.app_id}-invocations", timeout=120)
        entries, epochs = logs.internal_commands([
            {"partition": rec.partition, "offset": rec.offset, "value": cmd}
            for rec in self.internal if rec.value and (b'"entry"' in rec.value or b'"activate"' in rec.value)
            for cmd in commands.unpack(json.loads(rec.value))  # a record can hold a batch of commands
        ])
        with (self.workdir / "activations.jsonl").open("w") as f:
            for act in sorted(activations, key=lambda a: a.time):
                f.write(json.dumps({"time": checks.clock(act.time), "t": act.time, "incarnation": act.incarnation,
                                    "partition": act.partition}) + "\n")
        partitions = self.args.partitions
        evidence = checks.Evidence(
            source=source, posts=records["posts"], feeds=records["feedUpdates"],
            dup_posts=records["duplicatePostAttempts"], dup_feeds=records["duplicateFeedAttempts"],
            dead_letters=dead, status=status, calls=self.proxy.snapshot(), activations=activations,
            partition_of=lambda user: partition_for(f"UserFeed/{user}", partitions),
            events=self.events, entries=entries, epochs=epochs, session_timeout=self.args.session_timeout,
            bad=bad,
        )
        (self.workdir / "evidence.json").write_text(json.dumps({"partitions": partitions, **evidence.to_json()}))
        return evidence

    def engine_status(self, invs: list[str]) -> dict[str, str | None]:
        """The engine's status of each invocation (None: no worker knows it)."""
        ready = self.ready_workers()
        if not invs:
            return {}
        if not ready:
            return dict.fromkeys(invs, checks.NO_ANSWER)

        def one(inv: str) -> tuple[str, str | None]:
            code, body = http_json(f"{ready[0].url}/invocations/{inv}", timeout=20)
            if code == 200:
                return inv, body.get("status")
            return inv, None if code == 404 else checks.NO_ANSWER

        with ThreadPoolExecutor(8) as pool:
            return dict(pool.map(one, invs))

    def admissions(self) -> list[str]:
        """Diagnosis from the internal topic: source records admitted out of offset order."""
        assert self.broker is not None
        found = []
        for rec in self.internal:
            if not rec.value or b'"invoke"' not in rec.value:
                continue
            for cmd in commands.unpack(json.loads(rec.value)):
                source = cmd.get("source") or {}
                if cmd.get("op") == "invoke" and source.get("topic") == self.source_topic:
                    found.append(checks.Admission(int(source["offset"]), rec.timestamp))
        return checks.late_admissions(found)

    def evidence_dump(self, report: checks.Report) -> Path:
        """Internal-topic commands and changelog entries of the invocations in violations, with timestamps."""
        assert self.broker is not None
        path = self.workdir / "evidence.jsonl"
        invs = report.subjects
        with path.open("w") as f:
            for topic in (f"{self.app_id}-invocations", f"{self.app_id}-invocations-changelog",
                          f"{self.app_id}-results-changelog", f"{self.app_id}-meta-changelog"):
                try:
                    recs = read_topic(self.broker.bootstrap, topic, timeout=120)
                except Exception as exc:  # evidence is best effort
                    f.write(json.dumps({"topic": topic, "error": repr(exc)}) + "\n")
                    continue
                for rec in recs:
                    key = (rec.key or b"").decode("utf-8", "replace").strip('"')  # table keys are JSON
                    try:
                        value = json.loads(rec.value) if rec.value else None
                    except ValueError:
                        value = (rec.value or b"").decode("utf-8", "replace")
                    batch = isinstance(value, dict) and value.get("op") == commands.BATCH
                    for index, one in enumerate(commands.unpack(value) if batch else [value]):
                        ident = one.get("id") if isinstance(one, dict) else None
                        op = one.get("op") if isinstance(one, dict) else None
                        if key in invs or ident in invs or op == "activate" or topic.endswith("meta-changelog"):
                            f.write(json.dumps({"topic": topic, "partition": rec.partition, "offset": rec.offset,
                                                **({"index": index} if batch else {}),
                                                "time": checks.clock(rec.timestamp), "key": key, "value": one}) + "\n")
        return path

    # -- teardown --------------------------------------------------------------------
    def cleanup(self) -> None:
        if self.producer is not None:
            self.producer.stop(timeout=15)
        for worker in self.workers.values():
            try:
                worker.stop(timeout=20)
            except Exception as exc:  # keep stopping the rest
                say(f"chaos: stopping {worker.slot} failed: {exc!r}; SIGKILL")
                worker.kill()
        if self.proxy is not None:
            self.proxy.stop()
        if self.downstream is not None:
            self.downstream.stop()
        if self.broker is not None:
            self.broker.stop()


def last_error(log: str, incarnation: str | None) -> str:
    """The last exception line an incarnation logged, for a crash report."""
    log = log.rsplit(f"==== chaos: starting {incarnation} ", 1)[-1]
    lines = [ln for ln in log.splitlines() if re.match(r"^[\w.]+(Error|Exception): ", ln)]
    return f": {lines[-1][:200]}" if lines else ""


def engine_functions(
    code_dir: Path,
) -> tuple[Callable[..., str], Callable[[str, int], int], Callable[[str, str], str]]:
    """The engine's own invocation-id, partitioning and topic-id functions, from the code under test."""
    sys.path.insert(0, str(code_dir))
    try:
        from streamapp.durable.ids import for_record
        from streamapp.runtime.commands import partition_for
    finally:
        sys.path.remove(str(code_dir))

    def topic_id(bootstrap: str, topic: str) -> str:
        from streamapp.runtime.topic_ids import TopicIds  # the code snapshot's, imported above with the rest

        async def ask() -> str:
            ids = TopicIds({"bootstrap_servers": bootstrap.split(",")})
            try:
                return (await ids.lookup([topic]))[topic]
            finally:
                await ids.close()
        return asyncio.run(ask())

    return for_record, partition_for, topic_id
