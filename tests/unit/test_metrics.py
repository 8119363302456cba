"""Metrics without a broker: bounded dead-letter reasons, one registry per app."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

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
