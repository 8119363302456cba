"""The HTTP fuzz run is judged over every test process's answers at the session's end (tests/support/fuzzrun.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.support import fuzzrun


def config(base: Path, worker: bool = False) -> Any:
    c = SimpleNamespace(_tmp_path_factory=SimpleNamespace(getbasetemp=lambda: base))
    if worker:
        c.workerinput = {"workerid": "gw0"}
    return c


def test_verdict__answers_of_every_process_count_and_only_the_controller_judges(tmp_path: Path) -> None:
    controller, gw0, gw1 = config(tmp_path), config(tmp_path / "popen-gw0", True), config(tmp_path / "popen-gw1", True)
    assert fuzzrun.verdict(controller) is None  # the fuzz module did not run whole: nothing to judge
    for status in [200] * 150 + [400] * 10:
        fuzzrun.record(gw0, status)
    fuzzrun.mark_checked(gw0)
    why = fuzzrun.verdict(controller)
    assert why is not None and "200: 150" in why  # 160 answers, no 202 or 404 yet
    for status in [202] * 30 + [404] * 10:
        fuzzrun.record(gw1, status)  # the other process's share
    assert fuzzrun.verdict(gw0) is None  # a worker never judges
    assert fuzzrun.verdict(controller) is None
