"""Metrics and probes without a broker: bounded dead-letter reasons, liveness while fenced."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from streamapp.config import Settings
from streamapp.durable.service import Registry
from streamapp.runtime import faust_adapter
from streamapp.runtime.app import Runtime
from streamapp.runtime.ingress import RuntimeIngress
from streamapp.runtime.metrics import MAX_REASONS, Metrics, reason_label


@pytest.mark.parametrize(("error", "label"), [
    ("TerminalError: cannot process x", "TerminalError"),
    ("RuntimeError: flaky failure of 'f' 3", "RuntimeError"),
    ("TooLargeError: record of 1048577 bytes", "TooLargeError"),
    ("KilledError", "KilledError"),
    ("undecodable command", "undecodable command"),
    ("command 3 of the batch: not a command", "command"),
    ("", "other"),
])
def test_reason_label__is_the_error_class_or_the_words_before_any_detail(error: str, label: str) -> None:
    assert reason_label(error) == label


def test_dead_letters__reasons_past_the_bound_count_as_other() -> None:
    m = Metrics()
    for i in range(MAX_REASONS + 10):
        m.dead_lettered(f"Error{i}: boom", "S", "h")
    m.dead_lettered("Error0: again")
    assert len(m.dead_letters) == MAX_REASONS + 1
    assert m.dead_letters["other"] == 10 and m.dead_letters["Error0"] == 2
    assert m.invocations["dead_lettered", "S", "h"] == MAX_REASONS + 10


def test_metrics__each_app_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.step_done("S", "h", 0.5)
    assert b'streamapp_step_duration_seconds_count{handler="h",service="S"} 1.0' in generate_latest(a.registry)
    assert b'service="S"' not in generate_latest(b.registry)


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    settings = Settings.from_env({"STREAMAPP_DATA_DIR": str(tmp_path), "STREAMAPP_APP_ID": "unit-probes",
                                  "STREAMAPP_SESSION_TIMEOUT": "6"})
    rt = Runtime(settings, Registry())
    yield rt
    if rt.recovering is not None:
        rt.recovering.cancel()


async def test_liveness__fails_while_fenced_after_a_stall_until_the_group_reassigns(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(faust_adapter, "request_rejoin", lambda consumer: True)
    ingress = RuntimeIngress(runtime)
    assert ingress.liveness()["live"] is True  # starting: no tick yet
    runtime.watch_stall()
    assert ingress.liveness() == {"live": True, "tick_age": ingress.liveness()["tick_age"]}
    runtime.engine.alive_at = time.monotonic() - 60  # frozen for a minute
    late = ingress.liveness()
    assert late["live"] is False and "late" in late["reason"], late
    runtime.watch_stall()  # the tick on waking: fenced
    runtime.watch_stall()  # ticking again, but still fenced
    fenced = ingress.liveness()
    assert fenced["live"] is False and "fenced" in fenced["reason"], fenced
    assert fenced["tick_age"] < 1
    assert runtime.metrics.stalls == 1
    runtime.generation = None
    runtime.on_assignment(set())  # the group's assignment ends the fence
    assert ingress.liveness()["live"] is True
