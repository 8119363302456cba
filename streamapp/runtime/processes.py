"""``streamapp workers -n N``: N worker processes on one machine, each its own member of the group.

One worker process runs its handlers, its Kafka clients and its tables on
one core (one event loop). A machine with more cores runs more processes:
Kafka shares the partitions out among them as among workers on different
machines, and HTTP calls reach the owner of a key whichever process they
arrive at. Process ``i`` (from 0) gets

    STREAMAPP_WEB_PORT   the base port (STREAMAPP_WEB_PORT, 8080) + i
    STREAMAPP_DATA_DIR   <data dir>/proc<i>: its own RocksDB tables
                         (a process's tables are its own; after an unclean
                         stop they are restored from the changelogs)
    STREAMAPP_INSTANCE_ID  <base>-<i> when STREAMAPP_INSTANCE_ID=<base> is set:
                         a static member id per process slot, the same after
                         each restart, so a crashed process gets its
                         partitions back at once (runtime/membership.py)

and everything else from the environment. The supervisor starts them,
starts one again when it exits on its own (after 1 s, doubling up to 30 s
while it keeps failing within a minute; not one that exits with
``EX_FENCED``: another process runs with its instance id), and on SIGTERM or SIGINT stops all
(SIGTERM; SIGKILL after the grace period) and exits once they are gone.
STREAMAPP_ADVERTISED_URL names one address, so it is refused with N > 1.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from streamapp.config import Settings
from streamapp.runtime.membership import EX_FENCED, process_instance_id

GRACE = 60.0  # seconds a stopping worker gets before SIGKILL (a clean stop commits and flushes)
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0  # a process that ran this long before exiting starts again at once


def environments(n: int, env: Mapping[str, str]) -> list[dict[str, str]]:
    """The environment of each of the ``n`` processes (validated as a worker would)."""
    if n < 1:
        raise SystemExit(f"-n/--processes must be at least 1, not {n}")
    settings = Settings.from_env(env)
    if n > 1 and settings.advertised_url is not None:
        raise SystemExit("STREAMAPP_ADVERTISED_URL names one address; with several processes each advertises "
                         "its own port: leave it unset, or run each process yourself")
    if settings.web_port + n - 1 > 65535:
        raise SystemExit(f"STREAMAPP_WEB_PORT={settings.web_port} leaves no room for {n} processes")
    envs = []
    for i in range(n):
        proc = {**env, "STREAMAPP_WEB_PORT": str(settings.web_port + i),
                "STREAMAPP_DATA_DIR": str(settings.data_dir / f"proc{i}")}
        instance_id = process_instance_id(settings.instance_id, i)
        if instance_id is not None:
            proc["STREAMAPP_INSTANCE_ID"] = instance_id
        envs.append(proc)
    return envs


class Supervisor:
    def __init__(self, envs: list[dict[str, str]], argv: list[str]) -> None:
        self.envs = envs
        self.argv = argv  # the worker command line
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * len(envs)
        self.started_at = [0.0] * len(envs)
        self.backoff = [1.0] * len(envs)
        self.due = [0.0] * len(envs)
        self.stopping = False

    def start(self, i: int) -> None:
        self.procs[i] = subprocess.Popen(self.argv, env=self.envs[i])
        self.started_at[i] = time.monotonic()
        print(f"streamapp workers: process {i} started (pid {self.procs[i].pid}, "  # type: ignore[union-attr]
              f"port {self.envs[i]['STREAMAPP_WEB_PORT']})", file=sys.stderr, flush=True)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        for i in range(len(self.envs)):
            self.start(i)
        while not self.stopping:
            now = time.monotonic()
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() == EX_FENCED:
                    print(f"streamapp workers: process {i} (pid {proc.pid}) was fenced: another process joined "
                          f"with STREAMAPP_INSTANCE_ID={self.envs[i].get('STREAMAPP_INSTANCE_ID')}; not starting "
                          "it again", file=sys.stderr, flush=True)
                    self.procs[i] = None
                    self.due[i] = float("inf")
                elif proc is not None and proc.poll() is not None:
                    ran = now - self.started_at[i]
                    self.backoff[i] = 1.0 if ran > STABLE_AFTER else min(self.backoff[i] * 2, MAX_BACKOFF)
                    self.due[i] = now + (0.0 if ran > STABLE_AFTER else self.backoff[i])
                    print(f"streamapp workers: process {i} (pid {proc.pid}) exited with {proc.returncode} "
                          f"after {ran:.0f} s; starting it again in {self.due[i] - now:.0f} s",
                          file=sys.stderr, flush=True)
                    self.procs[i] = None
                elif proc is None and now >= self.due[i]:
                    self.start(i)
            time.sleep(0.2)
        return self.stop()

    def stop(self) -> int:
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE
        for proc in live:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"streamapp workers: pid {proc.pid} did not stop within {GRACE:.0f} s; killing it",
                      file=sys.stderr, flush=True)
                proc.kill()
                proc.wait()
        return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="streamapp workers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--processes", type=int, default=os.cpu_count() or 1,
                    help="worker processes (default: the machine's cores)")
    ap.add_argument("-l", "--loglevel", default="info", help="each worker's log level (as `streamapp worker -l`)")
    args = ap.parse_args(argv)
    envs = environments(args.processes, os.environ)
    for env in envs:
        Path(env["STREAMAPP_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    worker = [sys.executable, "-m", "streamapp", "worker", "-l", args.loglevel]
    return Supervisor(envs, worker).run()
