"""Fixtures shared by the suite. Integration fixtures need the real broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import harness
from tests.support import fuzzrun


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Judge the HTTP fuzz run over every test process; delete the topics this process made."""
    why = fuzzrun.verdict(session.config)
    if why is not None:
        print(f"\nFAILED after the tests: {why}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if not harness.CREATED:
        return
    try:
        harness.delete_created_topics()
    except Exception as exc:  # the suite's verdict stands; say why the topics stayed
        print(f"\nCould not delete this session's topics: {exc!r}")


@pytest.fixture(scope="session")
def broker() -> str:
    """The broker address: STREAMAPP_TEST_BROKER, or the local broker (started if needed)."""
    return harness.ensure_broker()


@pytest.fixture
def app_env(broker: str, tmp_path: Path) -> dict[str, str]:
    """Per-test topic names and settings for workers running the test services."""
    source = harness.unique("src")
    dead = harness.unique("dlq")
    harness.create_topics([source, dead])
    return {
        "source": source,
        "dead_letters": dead,
        "ledger": str(tmp_path / "ledger.jsonl"),
        "env": {
            "STREAMAPP_SUBSCRIPTIONS": f"{source}=Test/Nap",
            "STREAMAPP_SERVICES": "tests.support.services:services",
            "STREAMAPP_TEST_LEDGER": str(tmp_path / "ledger.jsonl"),
            "STREAMAPP_DEAD_LETTER_TOPIC": dead,
            "STREAMAPP_PARTITIONS": "4",
        },
    }


@pytest.fixture
def workers(app_env: dict[str, object], tmp_path: Path) -> Iterator[harness.WorkerFactory]:
    env = app_env["env"]
    assert isinstance(env, dict)
    factory = harness.WorkerFactory(tmp_path, harness.unique("it"), env)
    yield factory
    factory.stop_all()
