"""The HTTP fuzz run's answers, gathered from every test process and judged once the run has ended.

pytest-xdist shares the fuzz cases (one test per operation) out over the test
processes as it goes, and one process may reach its share minutes after the
other, so no single test sees the whole run. Each case appends its answer's
status to a file of its own process; the check test marks that the module
ran whole; at the session's end the controller reads every file
(``tests/conftest.py``).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

DIR = "fuzz-statuses"
CHECKED = "checked"  # written by the module's check: the whole fuzz module ran in this session
WANTED = {200, 202, 400, 404}  # valid and invalid requests of every kind answered
AT_LEAST = 200


def run_dir(config: Any) -> Path:
    """The session's shared directory (an xdist worker's temp dir is one level below the controller's)."""
    base = Path(config._tmp_path_factory.getbasetemp())
    return (base.parent if hasattr(config, "workerinput") else base) / DIR


def record(config: Any, status: int) -> None:
    where = run_dir(config)
    where.mkdir(exist_ok=True)
    with (where / f"{os.getpid()}.txt").open("a") as out:
        out.write(f"{status}\n")


def mark_checked(config: Any) -> None:
    where = run_dir(config)
    where.mkdir(exist_ok=True)
    (where / CHECKED).touch()


def statuses(where: Path) -> Counter[int]:
    return Counter(int(line) for path in where.glob("*.txt") for line in path.read_text().split())


def verdict(config: Any) -> str | None:
    """Why the fuzz run did not go through; None when it did, or when the module did not run whole."""
    if hasattr(config, "workerinput"):
        return None  # the controller judges, once every process is done
    where = run_dir(config)
    if not (where / CHECKED).exists():
        return None
    got = statuses(where)
    if sum(got.values()) >= AT_LEAST and WANTED <= set(got):
        return None
    return (f"the HTTP fuzz run did not go through: answers by status {dict(sorted(got.items()))} "
            f"(wanted at least {AT_LEAST}, with {sorted(WANTED)} among them)")
