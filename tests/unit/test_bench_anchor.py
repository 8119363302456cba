"""The Restate anchor's pure parts: the table and who is ahead, the merged result, Restate's config, the ledger."""

from __future__ import annotations

import datetime
import os
import tomllib
from pathlib import Path

import pytest

from bench.anchor import install, restate, table, usage
from bench.anchor.__main__ import merged
from bench.common import Figure, Result


def fig(value: float | None, restate_value: float | None, higher: bool = False) -> Figure:
    return Figure("p50", value, "ms", baseline=restate_value, baseline_name="Restate 1.7.12", higher_is_better=higher)


@pytest.mark.parametrize(("value", "baseline", "higher", "expected"), [
    (656.0, 1312.0, True, "Restate 2.00x"),  # throughput: Restate higher
    (1500.0, 1000.0, True, "streamapp 1.50x"),
    (24.0, 6.0, False, "Restate 4.00x"),  # latency: streamapp higher is worse
    (90.0, 300.0, False, "streamapp 3.33x"),  # RSS: streamapp lower
    (2.0, 4000.0, False, "streamapp 2,000x"),
    (100.0, 101.5, False, "even"),
    (None, 5.0, False, ""),
    (5.0, None, False, ""),
    (0.0, 5.0, False, ""),
])
def test_ahead__names_the_better_side_and_the_factor(value: float | None, baseline: float | None, higher: bool,
                                                     expected: str) -> None:
    assert table.ahead(fig(value, baseline, higher)) == expected


def test_table__streamapp_restate_ratio_and_direction_per_row() -> None:
    part = Result("latency")
    part.figures.append(fig(24.1, 5.88))
    part.figures.append(fig(656.0, None, higher=True))
    lines = table.table([part, Result("idle", problems=["Restate: crashed"])]).splitlines()
    assert lines[0].split() == ["part", "figure", "streamapp", "Restate", "streamapp/Restate", "better", "ahead"]
    assert lines[2].split() == ["latency", "p50", "24.1", "ms", "5.88", "ms", "4.10x", "lower", "Restate", "4.10x"]
    assert lines[3].split() == ["p50", "656", "ms", "-", "higher"]  # no Restate figure: no ratio, no verdict
    assert lines[4].split() == ["idle", "(no", "figures)", "FAILED"]


def test_merged__one_result_with_the_parts_named_and_the_load_spanning_them() -> None:
    a = Result("throughput", parameters={"n": 1}, seconds=10.0, load=([1.0, 1.0, 1.0], [2.0, 2.0, 2.0]))
    a.figures.append(fig(1.0, 2.0))
    b = Result("idle", parameters={"s": 5}, seconds=5.0, problems=["Restate: gone"],
               load=([3.0, 3.0, 3.0], [4.0, 4.0, 4.0]))
    b.figures.append(fig(3.0, 4.0))
    out = merged([a, b])
    assert out.scenario == "anchor" and out.seconds == 15.0
    assert [f.name for f in out.figures] == ["throughput: p50", "idle: p50"]
    assert out.parameters == {"throughput": {"n": 1}, "idle": {"s": 5}}
    assert out.problems == ["idle: Restate: gone"] and not out.ok
    assert out.load == ([1.0, 1.0, 1.0], [4.0, 4.0, 4.0])
    assert a.figures[0].name == "p50"  # the parts keep their own names


def test_config__ports_data_dir_and_the_kafka_cluster(tmp_path: Path) -> None:
    doc = tomllib.loads(restate.config(tmp_path / "data", "c1", 101, 102, 103, "127.0.0.1:9092,127.0.0.1:9093"))
    assert doc["base-dir"] == str(tmp_path / "data") and doc["cluster-name"] == "c1"
    assert doc["bind-address"] == "127.0.0.1:101"
    assert doc["admin"]["bind-address"] == "127.0.0.1:102"
    assert doc["ingress"]["bind-address"] == "127.0.0.1:103"
    assert doc["ingress"]["kafka-clusters"] == [
        {"name": restate.KAFKA_CLUSTER, "brokers": ["127.0.0.1:9092", "127.0.0.1:9093"]}]
    assert doc["disable-telemetry"] is True


def test_epoch__reads_sys_invocation_timestamps_as_utc() -> None:
    expected = datetime.datetime(2026, 12, 2, 5, 22, 56, 581000, tzinfo=datetime.UTC).timestamp()
    assert restate.epoch("2026-12-02T05:22:56.581Z") == pytest.approx(expected)


def test_ledger_tail__counts_only_the_new_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    tail = restate.LedgerTail(path)
    assert tail.lines() == 0  # not there yet
    path.write_text('{"i": 0}\n{"i": 1}\n')
    assert tail.lines() == 2
    with path.open("a") as f:
        f.write('{"i": 2}\n{"i"')  # a line being written
    assert tail.lines() == 3
    with path.open("a") as f:
        f.write(': 3}\n')
    assert tail.lines() == 4


def test_cpu_percent__of_one_core() -> None:
    assert usage.cpu_percent(10.0, 11.0, 20.0) == pytest.approx(5.0)
    assert usage.cpu_percent(0.0, 3.0, 2.0) == pytest.approx(150.0)  # more than one core busy
    with pytest.raises(ValueError):
        usage.cpu_percent(0.0, 1.0, 0.0)


def test_find__the_platform_binary_inside_node_modules(tmp_path: Path) -> None:
    bin_dir = tmp_path / "node_modules" / "@restatedev" / "restate-server-linux-x64" / "bin"
    bin_dir.mkdir(parents=True)
    assert install._find(tmp_path, "restate-server") is None
    binary = bin_dir / "restate-server"
    binary.write_text("#!/bin/sh\n")
    assert install._find(tmp_path, "restate-server") is None  # not executable
    os.chmod(binary, 0o755)
    assert install._find(tmp_path, "restate-server") == binary
    assert install._find(tmp_path, "restate") is None  # the CLI is another binary
