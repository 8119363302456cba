"""Where a kept result comes from: the code (exact revision, dirty or not), the command, the machine, its load.

A figure quoted in a README must come from committed code, so a run that
writes kept results (``python -m bench`` at full sizes, ``python -m chaos
--save``) refuses to start from a dirty tree unless told (``--allow-dirty``),
and every result records what it ran on.

Dirty means: ``git status`` shows a change under a path that can change a
figure (``WATCHED``):

    streamapp/                   the code measured
    bench/, chaos/               the scenarios, sizes, baselines, the fault driver and its checks
    tests/harness.py             how both start workers, create topics and produce
    tests/unit/engine_fakes.py   the fakes the in-process expiry scenario drives the engine with
    pyproject.toml               the pinned dependency versions
    tools/kafka/                 the local broker's version and configuration

Untracked files under those paths count (a module the revision does not have
cannot be rebuilt from it); files git ignores (``__pycache__``, ``data/``) do
not. Kept results (``bench/results/``, ``chaos/results/``) and Markdown do not
count: writing or describing a result does not change the next one. Outside
a git checkout nothing can be proved, so the tree counts as dirty.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import subprocess
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WATCHED = ("streamapp", "bench", "chaos", "tests/harness.py", "tests/unit/engine_fakes.py", "pyproject.toml",
           "tools/kafka")
NOT_WATCHED = ("bench/results/", "chaos/results/")

Git = Callable[[Sequence[str]], str]


def run_git(args: Sequence[str]) -> str:
    """``git args`` in the repository; raises OSError or CalledProcessError when git cannot answer."""
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30,
                          check=True).stdout


@dataclasses.dataclass(frozen=True)
class Code:
    """The code a run used: HEAD's full commit id, and the watched changes on top of it."""

    revision: str  # 40 hex digits, or "unknown"
    changes: tuple[str, ...]  # `git status --porcelain` lines under WATCHED (or why nothing is known)

    @property
    def dirty(self) -> bool:
        return bool(self.changes) or self.revision == "unknown"

    @property
    def label(self) -> str:
        return self.revision[:7] + ("+dirty" if self.dirty else "")


def watched_changes(porcelain: str) -> tuple[str, ...]:
    """The ``git status --porcelain`` lines that make a result not reproducible from its revision."""
    out = []
    for line in porcelain.splitlines():
        if len(line) < 4 or line.startswith("!!"):
            continue
        paths = [p.strip('"') for p in line[3:].split(" -> ")]  # a rename names both sides
        if all(p.startswith(NOT_WATCHED) or p.endswith(".md") for p in paths):
            continue
        out.append(line)
    return tuple(out)


def code_state(git: Git = run_git) -> Code:
    """HEAD and the watched changes on top of it (``git`` is swapped in tests)."""
    try:
        revision = git(["rev-parse", "--verify", "HEAD"]).strip()
        porcelain = git(["status", "--porcelain=v1", "--untracked-files=all", "--", *WATCHED])
    except (OSError, subprocess.SubprocessError) as exc:
        return Code("unknown", (f"git could not tell: {exc}",))
    if not re.fullmatch(r"[0-9a-f]{40}", revision):
        return Code("unknown", (f"git rev-parse HEAD gave {revision!r}",))
    return Code(revision, watched_changes(porcelain))


def refusal(code: Code, allow_dirty: bool, what: str) -> str | None:
    """Why ``what`` must not be written from this tree (None: go ahead)."""
    if not code.dirty or allow_dirty:
        return None
    shown = "\n".join(f"  {c}" for c in code.changes[:20])
    more = f"\n  ... {len(code.changes) - 20} more" if len(code.changes) > 20 else ""
    return (f"refusing to write {what} from a dirty tree ({code.label}): a figure must come from committed code.\n"
            f"{shown}{more}\n"
            "Commit (or stash) these first, or pass --allow-dirty (recorded in every result as dirty: true).")


def changed_during_run(start: Code, now: Code) -> str | None:
    """What changed in the tree since the run started (None: nothing watched)."""
    if now == start:
        return None
    if now.revision != start.revision:
        return f"HEAD moved from {start.revision[:7]} to {now.revision[:7]} during the run"
    return f"watched files changed during the run: {', '.join(sorted(set(now.changes) ^ set(start.changes)))}"


def versions() -> dict[str, str]:
    pom = (ROOT / "tools" / "kafka" / "pom.xml").read_text()
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    out = {"python": platform.python_version(), "kafka": match.group(1) if match else "unknown"}
    for dist in ("faust-streaming", "aiokafka", "mode-streaming", "rocksdict"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory_gb: float | None = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        memory_gb = None
    return {"cores": os.cpu_count(), "memory_gb": memory_gb, "cpu": model, "os": platform.platform()}


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages: was the machine shared?"""
    return [round(x, 2) for x in os.getloadavg()]


def record(code: Code, command: str, allow_dirty: bool) -> dict[str, Any]:
    """The provenance fields every kept result carries."""
    return {
        "revision": code.revision,
        "dirty": code.dirty,
        "changes": list(code.changes),
        "allow_dirty": allow_dirty,
        "command": command,
        "versions": versions(),
        "machine": machine(),
    }
