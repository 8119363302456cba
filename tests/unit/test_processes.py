"""``streamapp workers -n N``: what each process gets, and what the supervisor refuses."""

from __future__ import annotations

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
