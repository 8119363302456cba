"""``streamapp workers -n N``: what each process gets, and what the supervisor refuses."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from streamapp.runtime import processes


def test_environments__each_process_its_own_port_and_data_dir_the_rest_shared() -> None:
    env = {"STREAMAPP_WEB_PORT": "9000", "STREAMAPP_DATA_DIR": "/d", "STREAMAPP_APP_ID": "a", "X": "y"}
    envs = processes.environments(3, env)
    assert [(e["STREAMAPP_WEB_PORT"], e["STREAMAPP_DATA_DIR"]) for e in envs] == [
        ("9000", str(Path("/d/proc0"))), ("9001", str(Path("/d/proc1"))), ("9002", str(Path("/d/proc2")))]
    assert all(e["STREAMAPP_APP_ID"] == "a" and e["X"] == "y" for e in envs)


def test_environments__defaults_are_the_workers_defaults() -> None:
    (only,) = processes.environments(1, {})
    assert only["STREAMAPP_WEB_PORT"] == "8080" and only["STREAMAPP_DATA_DIR"] == str(Path("data/proc0"))


@pytest.mark.parametrize(("n", "env", "message"), [
    (0, {}, "at least 1"),
    (2, {"STREAMAPP_ADVERTISED_URL": "http://h:1"}, "STREAMAPP_ADVERTISED_URL"),
    (3, {"STREAMAPP_WEB_PORT": "65534"}, "no room for 3"),
    (2, {"STREAMAPP_PARTITIONS": "zero"}, "STREAMAPP_PARTITIONS"),  # validated as a worker would
])
def test_environments__refuses_what_cannot_work(n: int, env: dict[str, str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        processes.environments(n, env)


def test_environments__a_base_instance_id_becomes_one_stable_id_per_process_slot() -> None:
    envs = processes.environments(3, {"STREAMAPP_INSTANCE_ID": "host7"})
    assert [e["STREAMAPP_INSTANCE_ID"] for e in envs] == ["host7-0", "host7-1", "host7-2"]
    assert processes.environments(3, {"STREAMAPP_INSTANCE_ID": "host7"}) == envs  # the same after a restart
    assert all("STREAMAPP_INSTANCE_ID" not in e for e in processes.environments(2, {}))  # dynamic by default


def test_supervisor__a_fenced_process_is_not_started_again_one_that_failed_is(tmp_path: Path) -> None:
    script = tmp_path / "exit.py"
    script.write_text("import os, sys; open(os.environ['MARK'], 'a').write('x'); sys.exit(int(os.environ['CODE']))")
    fenced, failed = tmp_path / "fenced", tmp_path / "failed"
    envs = [{"MARK": str(fenced), "CODE": str(processes.EX_FENCED), "STREAMAPP_WEB_PORT": "1"},
            {"MARK": str(failed), "CODE": "3", "STREAMAPP_WEB_PORT": "2"}]
    sup = processes.Supervisor(envs, [sys.executable, str(script)])

    def stop_once_failed_ran_twice() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(failed.read_text() if failed.exists() else "") < 2:
            time.sleep(0.1)
        sup.stopping = True

    watcher = threading.Thread(target=stop_once_failed_ran_twice)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    watcher.start()
    try:
        sup.run()  # in the main thread: it installs signal handlers
    finally:
        watcher.join()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert failed.read_text() == "xx", "the failed process was not started again"
    assert fenced.read_text() == "x", "the fenced process was started again"
