"""Every benchmark scenario runs at smoke sizes against the real broker and completes.

``python -m bench --smoke`` exits non-zero when a scenario could not
complete or lost invocations (timings are reported, never asserted). It runs
inside the suite, not after it, so the test processes share it out with
the rest of the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_bench_smoke__every_scenario_completes_and_loses_nothing(broker: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--results", str(out)],
        cwd=ROOT, env={**os.environ, "STREAMAPP_TEST_BROKER": broker},
        capture_output=True, text=True, timeout=880,
    )
    assert proc.returncode == 0, f"bench --smoke exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    written = {p.name[len("YYYY-MM-DD-"):-len(".json")] for p in out.glob("*.json")}
    assert written == set(SCENARIOS), f"expected one result file per scenario, got {sorted(written)}"
