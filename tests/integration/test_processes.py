"""``streamapp workers -n 2`` against the real broker: two group members, restarted when they die, stopped together."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import psutil

from tests import harness


def two_free_ports() -> int:
    """A port p such that p and p + 1 were both free just now."""
    for _ in range(50):
        base = harness.free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise RuntimeError("no two consecutive free ports")


def test_workers__two_processes_share_the_partitions_restart_after_a_kill_and_stop_on_sigterm(
        app_env: dict[str, object], tmp_path: Path) -> None:
    env_extra = app_env["env"]
    assert isinstance(env_extra, dict)
    base = two_free_ports()
    env = {**os.environ, **env_extra, "STREAMAPP_APP_ID": harness.unique("procs"),
           "STREAMAPP_BROKER": harness.broker_url(), "STREAMAPP_DATA_DIR": str(tmp_path / "data"),
           "STREAMAPP_WEB_PORT": str(base), "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "workers.log").open("ab")
    sup = subprocess.Popen([sys.executable, "-m", "streamapp", "workers", "-n", "2", "-l", "info"],
                           cwd=harness.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    # Handles on the two processes' web ports, for their HTTP API (the supervisor started them).
    procs = [harness.Worker(env["STREAMAPP_APP_ID"], tmp_path, {}, tmp_path / "workers.log", web_port=base + i)
             for i in range(2)]

    def tail() -> str:
        return "\n".join((tmp_path / "workers.log").read_text(errors="replace").splitlines()[-60:])

    def live(i: int) -> set[int]:
        try:
            return set(procs[i].get("/health").get("live_partitions", []))
        except (OSError, aiohttp.ClientError, ValueError):
            return set()

    def shared_out() -> bool:
        a, b = live(0), live(1)
        return bool(a) and bool(b) and not a & b and len(a | b) == 4

    try:
        # Both join one group: the 4 partitions are shared out, none twice.
        harness.wait_for(shared_out, timeout=120, what="both processes to lead partitions", detail=tail)
        assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["proc0", "proc1"]
        # A call at either port runs, whichever process owns the key.
        for i in range(6):
            assert procs[i % 2].request("POST", f"/Test/k{i}/Tick", {"n": 0}) == (200, 1), tail()

        children = psutil.Process(sup.pid).children()
        assert len(children) == 2
        victim = children[0]
        victim.send_signal(signal.SIGKILL)
        harness.wait_for(lambda: len([c for c in psutil.Process(sup.pid).children() if c.pid != victim.pid]) == 2,
                         timeout=30, what="the supervisor to start the killed process again", detail=tail)
        harness.wait_for(shared_out, timeout=120, what="both processes to lead partitions again", detail=tail)

        children = psutil.Process(sup.pid).children()
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=90) == 0, tail()
        assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
        assert "exited with -9" in (tmp_path / "workers.log").read_text(errors="replace")
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)
            sup.wait()
