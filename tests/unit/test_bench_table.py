"""The README's benchmark table is printed from kept result files, each row naming its file and revision."""

from __future__ import annotations

import json
from pathlib import Path

from bench import table


def result(path: Path, scenario: str, value: float, revision: str, dirty: bool = False) -> Path:
    path.write_text(json.dumps({
        "scenario": scenario, "revision": revision, "dirty": dirty,
        "load_average": {"before": [0.4, 0.5, 0.6], "after": [1.2, 0.7, 0.6]},
        "figures": [{"name": "end-to-end invocations/s (1 worker)", "value": value, "unit": "inv/s",
                     "baseline": 4000.0, "baseline_name": "plain Faust agent", "ratio": value / 4000.0,
                     "target": 1200.0, "higher_is_better": True, "verdict": "missed"},
                    {"name": "not measured", "value": None, "unit": "s"}],
    }))
    return path


def test_rows__value_baseline_target_and_where_it_comes_from(tmp_path: Path) -> None:
    path = result(tmp_path / "2026-12-02-throughput.json", "throughput", 600.0, "a" * 40, dirty=True)
    (row,) = table.rows(path)
    assert "| throughput | end-to-end invocations/s (1 worker) | 600 inv/s |" in row
    assert "4,000 inv/s (plain Faust agent); ratio 0.15" in row and "≥ 1,200: missed" in row
    assert "aaaaaaa+dirty" in row and "load 0.4→1.2" in row and "2026-12-02-throughput.json" in row


def test_newest__one_file_per_scenario_the_latest_date(tmp_path: Path) -> None:
    result(tmp_path / "2026-11-28-throughput.json", "throughput", 1.0, "b" * 40)
    newer = result(tmp_path / "2026-12-02-throughput.json", "throughput", 2.0, "c" * 40)
    hol = result(tmp_path / "2026-11-28-head-of-line.json", "head-of-line", 3.0, "d" * 40)
    assert table.newest(tmp_path) == sorted([newer, hol])
