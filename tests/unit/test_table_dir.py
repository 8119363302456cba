"""Local tables after an unclean stop are dropped (restored from the changelogs), after a clean one kept."""

from __future__ import annotations

import time
from pathlib import Path

from streamapp.runtime.startup import CLEAN_STOP, DROPPED, mark_clean_stop, prepare_table_dir


def local_tables(table_dir: Path) -> Path:
    db = table_dir / "v1" / "tables" / "invocations-0.db"
    db.mkdir(parents=True)
    (db / "000001.sst").write_bytes(b"rows the changelog may not have")
    return db


def test_prepare_table_dir__tables_left_by_an_unclean_stop_are_dropped(tmp_path: Path) -> None:
    table_dir = tmp_path / "app"
    db = local_tables(table_dir)
    assert prepare_table_dir(table_dir) is True
    assert not db.exists()
    assert list(table_dir.iterdir()) == []
    # Moved aside at once, deleted in the background.
    deadline = time.monotonic() + 10
    while list(tmp_path.iterdir()) != [table_dir] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(tmp_path.iterdir()) == [table_dir]


def test_prepare_table_dir__a_sweep_left_unfinished_is_finished_by_the_next_start(tmp_path: Path) -> None:
    table_dir, other = tmp_path / "app", tmp_path / "app2"
    local_tables(table_dir / f"{DROPPED}x")  # not under the dir's own prefix: kept
    mark_clean_stop(table_dir)
    leftover = tmp_path / f"{DROPPED}app-{'0' * 32}"
    local_tables(leftover)
    another_apps = tmp_path / f"{DROPPED}app-2-{'0' * 32}"  # another app id's (app-2), not this one's
    local_tables(another_apps)
    other.mkdir()
    assert prepare_table_dir(table_dir) is False
    deadline = time.monotonic() + 10
    while leftover.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not leftover.exists() and another_apps.exists() and (table_dir / f"{DROPPED}x").exists()


def test_prepare_table_dir__tables_left_by_a_clean_stop_are_kept_and_the_mark_is_consumed(tmp_path: Path) -> None:
    db = local_tables(tmp_path)
    mark_clean_stop(tmp_path)
    assert prepare_table_dir(tmp_path) is False
    assert (db / "000001.sst").exists()
    assert not (tmp_path / CLEAN_STOP).exists(), "a crash after this start must not pass for a clean stop"
    assert prepare_table_dir(tmp_path) is True


def test_prepare_table_dir__a_first_start_creates_the_dir(tmp_path: Path) -> None:
    assert prepare_table_dir(tmp_path / "apps" / "a") is False
    assert (tmp_path / "apps" / "a").is_dir()
