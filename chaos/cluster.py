"""The processes a chaos run owns: a private broker (or cluster), the downstream backend, workers.

Every process is started by this module and stopped by its PID (the broker by
the PID file ``tools/kafka/kafka.sh`` writes in its own data dir); nothing here
looks for processes by name, and the shared dev broker on :9092 is never
touched. Nothing blocks for long: starts and restarts are spawned and polled,
so the fault plan keeps its timing.

Workers and the backend run from a copy of the ``streamapp`` package taken
when the run starts (``snapshot_code``), so edits to the tree during a long
run do not change the code under test halfway.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness import free_port

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "tools" / "kafka" / "kafka.sh"


def snapshot_code(dest: Path) -> str:
    """Copy the streamapp package under ``dest`` (the cwd of every process started here).

    Returns what was copied: the git commit, and "+ local changes" when the
    package differs from it.
    """
    shutil.copytree(ROOT / "streamapp", dest / "streamapp", ignore=shutil.ignore_patterns("__pycache__"))

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    head = git("rev-parse", "--short", "HEAD") or "unknown commit"
    dirty = git("status", "--porcelain", "--", "streamapp")
    return head + (" + local changes" if dirty else "")


def http_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """GET ``url``: (status, JSON body); (0, None) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(ValueError):
            return exc.code, json.loads(exc.read() or b"null")
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not reaped) is not alive.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return True


class Broker:
    """A single-node KRaft broker of our own: OS-chosen ports, a private data dir."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.controller_port = free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        # A broker SIGKILLed mid-write recovers its logs before it answers: on a
        # busy 2-core box that took longer than kafka.sh's default minute.
        self.env = dict(os.environ, KAFKA_PORT=str(self.port), KAFKA_CONTROLLER_PORT=str(self.controller_port),
                        STREAMAPP_DATA_DIR=str(data_dir), KAFKA_START_WAIT="300")
        self.starter: subprocess.Popen[bytes] | None = None
        self.ever_started = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def controllers(self) -> str:
        return str(self.controller_port)

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "kafka" / "broker.pid"

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_file.read_text().strip())
            return pid if _alive(pid) else None
        return None

    def start(self) -> None:
        """Spawn ``kafka.sh up`` (formats the data dir the first time); see ``starting``."""
        assert not self.starting(), "broker start already in progress"
        with self.log_path.open("ab") as log:
            self.starter = subprocess.Popen([str(KAFKA_SH), *self.start_args()], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=ROOT)
        self.ever_started = True

    def start_args(self) -> list[str]:
        return ["up"]

    def started(self) -> str:
        """What the last start brought up, for the run's log."""
        return f"pid {self.pid()}"

    def starting(self) -> bool:
        """True while ``kafka.sh up`` runs; raises if it failed."""
        if self.starter is None:
            return False
        rc = self.starter.poll()
        if rc is None:
            return True
        self.starter = None
        if rc != 0:
            raise RuntimeError(f"kafka.sh up failed with {rc}; see {self.log_path}")
        return False

    def wait_up(self, timeout: float = 360.0) -> None:
        deadline = time.monotonic() + timeout
        while self.starting():
            if time.monotonic() > deadline:
                raise RuntimeError(f"broker did not come up in {timeout:.0f}s; see {self.log_path}")
            time.sleep(0.2)

    def kill(self) -> int | None:
        """SIGKILL the broker (a crash: no shutdown, data dir as it is); returns its PID."""
        return self._sigkill(self.pid())

    @staticmethod
    def _sigkill(pid: int | None) -> int | None:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        return pid

    def stop(self) -> None:
        """Stop the broker for good: ``kafka.sh down`` (by PID file), SIGKILL if that fails."""
        if self.starter is not None and self.starter.poll() is None:
            self.starter.kill()
            self.starter.wait(timeout=30)
        if not self.ever_started:
            return
        with self.log_path.open("ab") as log:
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run([str(KAFKA_SH), "down"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                               cwd=ROOT, timeout=90)
        self.kill_all()

    def kill_all(self) -> None:
        self.kill()


class BrokerCluster(Broker):
    """A local KRaft cluster of our own (``kafka.sh`` with ``KAFKA_BROKERS``): OS-chosen ports, a private data dir.

    The same face as ``Broker`` for the driver: ``kill`` SIGKILLs one node (in
    turn: 1, 2, 3, 1, ...), ``start`` restarts the node last killed (the whole
    cluster the first time), so a broker fault takes one of the brokers away
    while the others keep every partition's leader and two in-sync replicas.
    """

    def __init__(self, data_dir: Path, log_path: Path, brokers: int) -> None:
        super().__init__(data_dir, log_path)
        self.brokers = brokers
        ports: list[int] = []
        while len(ports) < 2 * brokers:
            if (port := free_port()) not in ports:
                ports.append(port)
        self.ports, self.controller_ports = ports[:brokers], ports[brokers:]
        self.env.update(KAFKA_BROKERS=str(brokers), KAFKA_PORTS=",".join(map(str, self.ports)),
                        KAFKA_CONTROLLER_PORTS=",".join(map(str, self.controller_ports)), KAFKA_HEAP="320m")
        self.kills = 0
        self.down: int | None = None  # the node last killed, until it is started again
        self.restarted: int | None = None  # the node the last start-node brought back

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    @property
    def url(self) -> str:
        return ";".join(f"kafka://127.0.0.1:{p}" for p in self.ports)

    @property
    def controllers(self) -> str:
        return ",".join(map(str, self.controller_ports))

    def node_pid(self, node: int) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.data_dir / "kafka-cluster" / f"node{node}" / "broker.pid").read_text().strip())
            return pid if _alive(pid) else None
        return None

    def pid(self) -> int | None:
        """The PID of the node the next ``kill`` takes, when it runs."""
        return self.node_pid(self.kills % self.brokers + 1)

    def start_args(self) -> list[str]:
        return ["start-node", str(self.down)] if self.down is not None else ["up"]

    def starting(self) -> bool:
        spawned = self.starter is not None
        if super().starting():
            return True
        if spawned:  # it finished, and well (or it raised): the node is back
            self.restarted, self.down = self.down, None
        return False

    def started(self) -> str:
        node = self.restarted
        return f"node {node}, pid {self.node_pid(node)}" if node is not None else f"{self.brokers} nodes"

    def kill(self) -> int | None:
        """SIGKILL the next node (a crash); returns its PID."""
        self.down = self.kills % self.brokers + 1
        self.kills += 1
        return self._sigkill(self.node_pid(self.down))

    def kill_all(self) -> None:
        for node in range(1, self.brokers + 1):
            self._sigkill(self.node_pid(node))


class Downstream:
    """The downstream backend (``python -m streamapp.testing.downstream``) on an OS-chosen port."""

    def __init__(self, code_dir: Path, log_path: Path, *args: str) -> None:
        self.code_dir = code_dir
        self.log_path = log_path
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> Downstream:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamapp.testing.downstream", "--port", "0", *self.args],
                cwd=self.code_dir, stdout=log, stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self.url:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if "listening on " in line:
                    self.url = line.split("listening on ", 1)[1].strip()
            if self.proc.poll() is not None:
                raise RuntimeError(f"downstream backend exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"downstream backend did not listen in {timeout:.0f}s")
            time.sleep(0.1)
        return self

    def records(self) -> dict[str, Any]:
        status, body = http_json(self.url + "/records", timeout=30)
        if status != 200:
            raise RuntimeError(f"GET {self.url}/records -> {status}")
        return body  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


@dataclass
class Worker:
    """One worker slot: a fixed data dir, web port and log; a new incarnation on each start."""

    slot: str
    app_id: str
    code_dir: Path
    data_dir: Path
    log_path: Path
    env: dict[str, str]
    web_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    incarnation: str | None = None
    starts: int = 0
    paused: bool = False
    expected_exit: bool = True  # False while it runs; an exit then is a crash
    was_ready: bool = False  # this incarnation answered /health ready at least once
    incarnation_pids: dict[str, int] = field(default_factory=dict)  # every start (pids get reused)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, broker_url: str, downstream_url: str) -> str:
        """Spawn a new incarnation; returns its name (``slot.N``). Does not wait for readiness."""
        assert not self.alive(), f"{self.slot} is already running"
        self.starts += 1
        self.incarnation = f"{self.slot}.{self.starts}"
        env = dict(os.environ)
        env.update(self.env)
        env.update(
            STREAMAPP_APP_ID=self.app_id,
            STREAMAPP_BROKER=broker_url,
            STREAMAPP_DATA_DIR=str(self.data_dir),
            STREAMAPP_WEB_PORT=str(self.web_port),
            STREAMAPP_DOWNSTREAM_URL=downstream_url,
            # The plan always brings the broker back, but on a loaded machine its
            # restart can take longer than the default minute: a worker that gave
            # up waiting would count as a crash although it did what it is told.
            STREAMAPP_BROKER_WAIT=os.environ.get("STREAMAPP_BROKER_WAIT", "600"),
            PYTHONUNBUFFERED="1",
        )
        with self.log_path.open("ab") as log:
            # A killed incarnation can leave its last line unfinished (a print cut short): the marker
            # must start a line of its own, or the lines below it are not attributed to this incarnation.
            newline = b"" if ends_a_line(self.log_path) else b"\n"
            log.write(newline + f"==== chaos: starting {self.incarnation} at {time.time():.3f}\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamapp", "worker", "-l", "info"],
                cwd=self.code_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.incarnation_pids[self.incarnation] = self.proc.pid
        self.paused = False
        self.expected_exit = False
        self.was_ready = False
        return self.incarnation

    def _signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL (a crash: no shutdown code runs)."""
        self.expected_exit = True
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)
        self.paused = False

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def terminate(self) -> None:
        """Clean stop, not waited for (Faust leaves the group: a rebalance)."""
        self.expected_exit = True
        if self.paused:
            self.resume()
        self._signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> None:
        """Clean stop, waited for; SIGKILL after ``timeout``."""
        self.terminate()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def crashed(self) -> bool:
        """True when the process exited without the driver asking it to."""
        return not self.expected_exit and self.proc is not None and self.proc.poll() is not None

    def health(self) -> dict[str, Any] | None:
        if not self.alive() or self.paused:
            return None
        status, body = http_json(self.url + "/health", timeout=3.0)
        if status != 200 or not isinstance(body, dict):
            return None
        self.was_ready = self.was_ready or bool(body.get("ready"))
        return body

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def ends_a_line(path: Path) -> bool:
    """Whether the file is empty or its last byte ends a line."""
    with path.open("rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
