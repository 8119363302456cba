"""Kept results come from committed code: the dirty-tree rule and what every result records (no broker).

git is swapped for a fake answering ``rev-parse`` and ``status``; the bench's
and the chaos driver's entry points are run up to the point where they would
start something.
"""

from __future__ import annotations

import ast
import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import bench.__main__ as bench_main
from bench import provenance, report
from bench.common import Result
from chaos import checks
from chaos import main as chaos_main

SHA = "0123456789abcdef0123456789abcdef01234567"
CLEAN = provenance.Code(SHA, ())
DIRTY = provenance.Code(SHA, (" M streamapp/runtime/store.py",))


def fake_git(status: str, revision: str = SHA, calls: list[list[str]] | None = None) -> provenance.Git:
    def git(args: Sequence[str]) -> str:
        if calls is not None:
            calls.append(list(args))
        if args[0] == "rev-parse":
            return revision + "\n"
        if args[0] == "status":
            return status
        raise AssertionError(f"unexpected git {args}")
    return git


# -- what counts as dirty ----------------------------------------------------------------
def test_code_state__clean_tree__full_revision_not_dirty():
    code = provenance.code_state(fake_git(""))
    assert (code.revision, code.dirty, code.label) == (SHA, False, "0123456")


def test_code_state__asks_git_about_the_watched_paths_with_untracked_files():
    calls: list[list[str]] = []
    provenance.code_state(fake_git("", calls=calls))
    status = next(c for c in calls if c[0] == "status")
    assert "--untracked-files=all" in status
    assert status[status.index("--") + 1:] == list(provenance.WATCHED)


@pytest.mark.parametrize("line", [
    " M streamapp/runtime/store.py",
    "M  bench/scenarios/timers.py",
    "?? chaos/new_fault.py",
    " D tests/harness.py",
    " M pyproject.toml",
    "R  bench/old.py -> bench/results/old.py",
])
def test_code_state__change_that_can_move_a_figure__dirty(line):
    code = provenance.code_state(fake_git(line + "\n"))
    assert code.dirty and code.changes == (line,) and code.label == "0123456+dirty"


@pytest.mark.parametrize("line", [
    "?? bench/results/2026-12-02-latency.json",
    " M bench/results/2026-11-28-timers.json",
    "?? chaos/results/2026-12-02-seed42.json",
    " M bench/README.md",
])
def test_code_state__kept_results_and_markdown__not_dirty(line):
    assert not provenance.code_state(fake_git(line + "\n")).dirty


def test_code_state__git_cannot_answer__dirty_and_unknown():
    def broken(args: Sequence[str]) -> str:
        raise OSError("git: not found")
    code = provenance.code_state(broken)
    assert code.dirty and code.revision == "unknown" and "not found" in code.changes[0]


def test_refusal__dirty_tree__names_the_files_unless_allowed():
    message = provenance.refusal(DIRTY, allow_dirty=False, what="benchmark results")
    assert message is not None and "streamapp/runtime/store.py" in message and "--allow-dirty" in message
    assert provenance.refusal(DIRTY, allow_dirty=True, what="benchmark results") is None
    assert provenance.refusal(CLEAN, allow_dirty=False, what="benchmark results") is None


def test_changed_during_run__commit_or_edit__described():
    assert provenance.changed_during_run(CLEAN, CLEAN) is None
    moved = provenance.changed_during_run(CLEAN, provenance.Code("f" * 40, ()))
    assert moved is not None and "HEAD moved from 0123456 to fffffff" in moved
    edited = provenance.changed_during_run(CLEAN, DIRTY)
    assert edited is not None and "streamapp/runtime/store.py" in edited


def test_watched__covers_every_tests_module_bench_and_chaos_import():
    """bench/ and chaos/ borrow test helpers: a change to one of those moves figures too."""
    root = provenance.ROOT
    borrowed = set()
    for path in [*root.glob("bench/**/*.py"), *root.glob("chaos/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tests":
                names = [node.module] if node.module != "tests" else [f"tests.{a.name}" for a in node.names]
                borrowed.update(f"{n.replace('.', '/')}.py" for n in names)
    assert borrowed, "expected bench/ to import tests.harness"
    unwatched = {f for f in borrowed if not any(f == w or f.startswith(w + "/") for w in provenance.WATCHED)}
    assert not unwatched


# -- the bench ---------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def keep_signal_handlers(monkeypatch):
    """``bench.__main__.main`` installs a SIGTERM handler; not in the test process."""
    monkeypatch.setattr(bench_main.signal, "signal", lambda *args: None)


class NoRun:
    def __init__(self, **kw: Any) -> None:
        self.keep = False

    def stop_workers(self) -> None:
        pass

    def close(self) -> None:
        pass


class BrokerReachedError(Exception):
    """The bench got past the dirty-tree rule (it asks for the broker next)."""


def reached_broker() -> str:
    raise BrokerReachedError


def test_bench__dirty_tree__refuses_before_starting_anything(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(provenance, "code_state", lambda: DIRTY)
    monkeypatch.setattr(bench_main.harness, "ensure_broker", reached_broker)
    assert bench_main.main(["--only", "expiry", "--results", str(tmp_path)]) == 2
    assert "refusing to write benchmark results from a dirty tree" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--allow-dirty", "--smoke"])
def test_bench__dirty_tree_with_allow_dirty_or_smoke__goes_ahead(monkeypatch, tmp_path, flag):
    monkeypatch.setattr(provenance, "code_state", lambda: DIRTY)
    monkeypatch.setattr(bench_main.harness, "ensure_broker", reached_broker)
    with pytest.raises(BrokerReachedError):
        bench_main.main(["--only", "expiry", "--results", str(tmp_path), flag])


def fake_scenario(run: Any, result: Result) -> None:
    result.add("outcomes expired per second", 3000.0, "rows/s", target=2400.0, higher_is_better=True)


def run_fake_bench(monkeypatch, tmp_path, states: list[provenance.Code], *flags: str) -> int:
    states = list(states)
    monkeypatch.setattr(provenance, "code_state", lambda: states.pop(0) if len(states) > 1 else states[0])
    monkeypatch.setattr(bench_main.harness, "ensure_broker", lambda: "kafka://nowhere:9092")
    monkeypatch.setattr(bench_main, "Run", NoRun)
    monkeypatch.setitem(bench_main.SCENARIOS, "expiry", fake_scenario)
    return bench_main.main(["--only", "expiry", "--results", str(tmp_path), *flags])


def test_bench__clean_tree__result_records_revision_command_machine_versions_load(monkeypatch, tmp_path):
    assert run_fake_bench(monkeypatch, tmp_path, [CLEAN]) == 0
    (path,) = tmp_path.iterdir()
    doc = json.loads(path.read_text())
    assert (doc["revision"], doc["dirty"], doc["changes"], doc["allow_dirty"]) == (SHA, False, [], False)
    assert doc["command"] == f"python -m bench --only expiry --results {tmp_path}"
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["memory_gb"] > 0
    assert {"python", "kafka", "faust-streaming", "aiokafka"} <= doc["versions"].keys()
    assert all(len(doc["load_average"][k]) == 3 for k in ("before", "after"))
    assert doc["figures"][0]["verdict"] == "met"


def test_bench__allowed_dirty_tree__recorded_as_dirty_with_the_changes(monkeypatch, tmp_path):
    assert run_fake_bench(monkeypatch, tmp_path, [DIRTY], "--allow-dirty") == 0
    doc = json.loads(next(tmp_path.iterdir()).read_text())
    assert (doc["dirty"], doc["allow_dirty"], doc["changes"]) == (True, True, list(DIRTY.changes))
    assert "--allow-dirty" in doc["command"]


def test_bench__tree_changes_during_the_run__result_not_written(monkeypatch, tmp_path, capsys):
    assert run_fake_bench(monkeypatch, tmp_path, [CLEAN, DIRTY]) == 1
    assert list(tmp_path.iterdir()) == []
    assert "watched files changed during the run" in capsys.readouterr().out


def test_report_write__no_load_average__refused(tmp_path):
    with pytest.raises(ValueError, match="load average"):
        report.write(Result("timers"), tmp_path, datetime.datetime.now(), False,
                     provenance.record(CLEAN, "python -m bench", False))


# -- chaos -------------------------------------------------------------------------------
def test_chaos_save__dirty_tree__refuses_before_starting_anything(monkeypatch, capsys):
    monkeypatch.setattr(provenance, "code_state", lambda: DIRTY)

    def no_run(args: Any) -> None:
        raise AssertionError("a chaos run was started")
    monkeypatch.setattr(chaos_main, "ChaosRun", no_run)
    assert chaos_main.main(["--save", "--seed", "7", "--duration", "30"]) == 2
    assert "refusing to write a chaos report from a dirty tree" in capsys.readouterr().out


def test_chaos_save__report_kept_with_its_provenance(tmp_path: Path):
    args = chaos_main.parse_args(["--seed", "42", "--duration", "600", "--events", "3000", "--save", str(tmp_path)])
    saving = chaos_main.Saving(args, CLEAN)
    result = checks.Report(faults=85, events=3000, faults_effective=80)
    lines = ["chaos run: seed=42 duration=600s ...", "[chaos +   5.0s] fault #1 kill_worker w0"]
    path = saving.save(SimpleNamespace(code_version="0123456"), result, lines, 0)  # type: ignore[arg-type]
    assert path.name == f"{datetime.date.today():%Y-%m-%d}-seed42.json"
    doc = json.loads(path.read_text())
    assert (doc["seed"], doc["duration"], doc["ok"], doc["exit_status"]) == (42, 600.0, True, 0)
    assert (doc["revision"], doc["dirty"], doc["allow_dirty"]) == (SHA, False, False)
    assert doc["command"] == f"python -m chaos --seed 42 --duration 600 --events 3000 --save {tmp_path}"
    assert doc["summary"] == result.summary() and doc["summary"].startswith("faults=85 events=3000 lost=0")
    assert doc["report"] == lines
    assert doc["machine"]["cores"] >= 1 and all(len(doc["load_average"][k]) == 3 for k in ("before", "after"))
    again = saving.save(SimpleNamespace(code_version="0123456"), result, lines, 0)  # type: ignore[arg-type]
    assert again != path and again.exists()
