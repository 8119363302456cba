"""Local tables after an unclean stop are dropped (restored from the changelogs), after a clean one kept."""

from __future__ import annotations

from pathlib import Path

from streamapp.runtime.startup import CLEAN_STOP, mark_clean_stop, prepare_table_dir


def local_tables(table_dir: Path) -> Path:
    db = table_dir / "v1" / "tables" / "invocations-0.db"
    db.mkdir(parents=True)
    (db / "000001.sst").write_bytes(b"rows the changelog may not have")
    return db


def test_prepare_table_dir__tables_left_by_an_unclean_stop_are_dropped(tmp_path: Path) -> None:
    db = local_tables(tmp_path)
    assert prepare_table_dir(tmp_path) is True
    assert not db.exists()
    assert list(tmp_path.iterdir()) == []


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
