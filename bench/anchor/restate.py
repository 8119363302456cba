"""One Restate server and its SDK deployment, started under the bench's temp dir and stopped by PID.

    <run temp dir>/restate-<name>-<id>/
        restate.toml     cluster and node name, base dir, the three ports, the Kafka cluster "bench"
        data/            the server's base dir (its RocksDB, its log)
        server.log       restate-server's output
        sdk.log          the SDK process's output (python -m bench.anchor.restate_service)
        ledger.jsonl     one line per handler end: {"i", "id", "t"}

Ports come from the OS (fabric, admin, ingress, SDK). Both processes are
started through ``Run.spawn`` (own session, PID kept), so ``Run.stop_workers``
and ``Run.close`` stop them on any exit. Everything else of Restate's is its
defaults (24 partitions, 2 GiB RocksDB budget): the anchor is Restate as it ships.

The bench reads completions from Restate's own introspection table
(``sys_invocation``, admin ``POST /query``): ``completed_at`` is when the
partition processor applied the invocation's completion, i.e. when it was
durable, the moment streamapp's figures also stop the clock at.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.anchor.install import Installed
from bench.common import BenchError, Run, poll
from tests import harness

KAFKA_CLUSTER = "bench"
SERVICE = "Bench"


def config(base: Path, cluster: str, fabric: int, admin: int, ingress: int, brokers: str) -> str:
    """restate.toml: names, where the data goes, the ports, and the broker (everything else: Restate's defaults)."""
    return "\n".join([
        f'cluster-name = "{cluster}"',
        'node-name = "n1"',
        f'base-dir = "{base}"',
        f'bind-address = "127.0.0.1:{fabric}"',
        f'advertised-address = "http://127.0.0.1:{fabric}/"',
        "disable-telemetry = true",
        "log-disable-ansi-codes = true",
        "",
        "[admin]",
        f'bind-address = "127.0.0.1:{admin}"',
        "",
        "[ingress]",
        f'bind-address = "127.0.0.1:{ingress}"',
        "",
        "[[ingress.kafka-clusters]]",
        f'name = "{KAFKA_CLUSTER}"',
        f"brokers = {json.dumps(brokers.split(','))}",
        "",
    ])


def epoch(timestamp: str) -> float:
    """A ``sys_invocation`` timestamp (``2026-12-02T05:22:56.581Z``) as seconds since the epoch."""
    return datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


class Restate:
    """restate-server + the SDK process for one measurement; ``start()``, ``subscribe()``, ``stop()``."""

    def __init__(self, r: Run, installed: Installed, name: str) -> None:
        self.run = r
        self.installed = installed
        self.name = harness.unique(f"restate-{name}")
        self.dir = r.base / self.name
        self.dir.mkdir()
        self.ledger = self.dir / "ledger.jsonl"
        self.admin_port, self.ingress_port, self.fabric_port, self.sdk_port = (harness.free_port() for _ in range(4))
        self.server: subprocess.Popen[bytes] | None = None
        self.sdk: subprocess.Popen[bytes] | None = None
        self.subscriptions: list[str] = []

    # -- processes ---------------------------------------------------------------
    def start(self, timeout: float = 120) -> Restate:
        cfg = self.dir / "restate.toml"
        cfg.write_text(config(self.dir / "data", self.name, self.fabric_port, self.admin_port, self.ingress_port,
                              harness.bootstrap()))
        self.server = self.run.spawn(
            [str(self.installed.server), "--config-file", str(cfg), "--no-logo", "--listen-mode", "tcp"],
            {}, f"{self.name}/server.log")
        self.sdk = self.run.spawn(
            [str(self.installed.python), "-m", "bench.anchor.restate_service", "--port", str(self.sdk_port)],
            {"PYTHONPATH": str(harness.ROOT), "BENCH_LEDGER": str(self.ledger), "VIRTUAL_ENV": ""},
            f"{self.name}/sdk.log")
        poll(lambda: self._request("GET", "/health", timeout=5)[0] == 200, timeout=timeout,
             what="restate-server's admin API", interval=0.2, alive=self.alive)
        # Registration needs the SDK listening and the cluster's partitions running: retried until it holds.
        poll(self._register, timeout=timeout, what="the SDK deployment to register", interval=0.5, alive=self.alive)
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in (self.server, self.sdk) if p is not None]

    def alive(self) -> None:
        for what, proc in (("restate-server", self.server), ("the Restate SDK process", self.sdk)):
            if proc is not None and proc.poll() is not None:
                log = "server.log" if proc is self.server else "sdk.log"
                raise BenchError(f"{what} exited with {proc.returncode}:\n{self.run.log_tail(f'{self.name}/{log}')}")

    def stop(self) -> None:
        for proc in (self.sdk, self.server):
            if proc is not None:
                Run.stop(proc)

    # -- admin API ----------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", data=data, method=method,
                                     headers={"content-type": "application/json", "accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (OSError, ValueError) as exc:
            return 0, str(exc)

    def _register(self) -> bool:
        status, _ = self._request("POST", "/deployments", {"uri": f"http://127.0.0.1:{self.sdk_port}"}, timeout=10)
        return status in (200, 201)

    def subscribe(self, topic: str, handler: str) -> str:
        """A Kafka subscription ``topic`` -> ``Bench/<handler>`` read from the topic's start; its id."""
        status, body = self._request("POST", "/subscriptions", {
            "source": f"kafka://{KAFKA_CLUSTER}/{topic}", "sink": f"service://{SERVICE}/{handler}",
            "options": {"auto.offset.reset": "earliest"}})
        if status not in (200, 201):
            raise BenchError(f"creating the subscription {topic} -> {SERVICE}/{handler} failed: {status} {body}")
        sub_id = str(body["id"])
        self.subscriptions.append(sub_id)
        return sub_id

    def query(self, sql: str) -> list[dict[str, Any]]:
        status, body = self._request("POST", "/query", {"query": sql}, timeout=60)
        if status != 200:
            raise BenchError(f"Restate query failed: {status} {body}\n{sql}")
        return list(body["rows"])

    def counts(self, sub_id: str) -> tuple[int, int, float | None]:
        """(completed successfully, completed with a failure, latest completed_at) of one subscription's invocations."""
        rows = self.query(
            "SELECT completion_result AS result, count(*) AS n, max(completed_at) AS last FROM sys_invocation "
            f"WHERE invoked_by_subscription_id = '{sub_id}' AND status = 'completed' GROUP BY completion_result")
        ok = sum(int(r["n"]) for r in rows if r["result"] == "success")
        failed = sum(int(r["n"]) for r in rows if r["result"] != "success")
        last = max((epoch(r["last"]) for r in rows if r.get("last")), default=None)
        return ok, failed, last

    def completed_at(self, sub_id: str) -> dict[str, float]:
        """Invocation id -> completed_at, for every invocation of the subscription that completed successfully."""
        rows = self.query(
            "SELECT id, completed_at FROM sys_invocation "
            f"WHERE invoked_by_subscription_id = '{sub_id}' AND status = 'completed' AND completion_result = 'success'")
        return {str(r["id"]): epoch(r["completed_at"]) for r in rows}

    def wait_completed(self, sub_id: str, n: int, timeout: float, tail: LedgerTail | None = None) -> float:
        """Wait until ``n`` invocations of the subscription completed; the latest ``completed_at``.

        The ledger (a line per handler end) is the cheap trigger; Restate's table is then asked until it
        agrees, so the SQL engine is not polled while the invocations run.
        """
        deadline = time.monotonic() + timeout
        if tail is not None:
            poll(lambda: tail.lines() >= n, timeout=timeout, what=f"{n} handler ends in the Restate ledger",
                 interval=0.05, alive=self.alive, detail=tail.lines)
        last_seen: tuple[int, int, float | None] = (0, 0, None)

        def done() -> bool:
            nonlocal last_seen
            last_seen = self.counts(sub_id)
            return last_seen[0] + last_seen[1] >= n

        poll(done, timeout=max(5.0, deadline - time.monotonic()), what=f"{n} completed Restate invocations",
             interval=0.25, alive=self.alive, detail=lambda: last_seen)
        if last_seen[1]:
            raise BenchError(f"{last_seen[1]} Restate invocations failed")
        if last_seen[2] is None:
            raise BenchError("Restate reported completions without a completed_at")
        return last_seen[2]


class LedgerTail:
    """Counts the lines of a growing ledger file without re-reading it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.count = 0

    def lines(self) -> int:
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
            self.offset += len(chunk)
            self.count += chunk.count(b"\n")
        return self.count
