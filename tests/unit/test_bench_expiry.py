"""The broker-free expiry benchmark runs against the engine as it is.

``make test`` runs every benchmark scenario at smoke sizes in one long test
(tests/integration/test_bench_smoke.py); this one reaches the expiry
scenario in seconds, so a change to the engine's command types or state that the scenario relies on
fails here first. Nothing timed is asserted: only that each phase completes
and leaves no outcome or index row behind.
"""

from __future__ import annotations

from pathlib import Path

from bench.common import Result
from bench.scenarios import expiry


def test_expiry_scenario__drains_backlog_steady_rounds_and_sweep(tmp_path: Path) -> None:
    rig = expiry.Rig(tmp_path / "expiry")
    rig.engine.expect_activation(0, "e1")
    rig.apply({"op": "activate", "epoch": "e1", "at": 0.0})
    result = Result("expiry")

    expiry.backlog(rig, result, 300)
    expiry.steady(rig, result, 2)
    expiry.sweep(rig, result, 300)

    assert result.problems == []
    assert rig.rows(rig.tables.results) == 300  # the swept ones, indexed but not past the retention
    assert rig.rows(rig.tables.expiry) == 300
    names = [f.name for f in result.figures]
    assert "backlog: drained at the command cadence" in names
    assert "upgrade sweep: outcomes indexed at the command cadence" in names
