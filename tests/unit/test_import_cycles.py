"""The import-cycle check of ``make lint``: finds a cycle, ignores what does not load at import time."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("import_cycles", ROOT / "tools" / "import_cycles.py")
assert spec is not None and spec.loader is not None
import_cycles = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_cycles)


def package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_cycle_through_three_modules_is_found(tmp_path: Path) -> None:
    root = package(tmp_path, {"a.py": "from pkg import b\n", "b.py": "from pkg.c import x\n",
                              "c.py": "import pkg.a\nx = 1\n"})
    assert import_cycles.cycles(import_cycles.graph(root)) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_type_checking_and_function_level_imports_are_not_cycles(tmp_path: Path) -> None:
    root = package(tmp_path, {
        "a.py": "from typing import TYPE_CHECKING\nfrom pkg import b\nif TYPE_CHECKING:\n    from pkg import c\n",
        "b.py": "def f():\n    from pkg import a\n",
        "c.py": "from pkg import a\n",
    })
    assert import_cycles.cycles(import_cycles.graph(root)) == []


def test_streamapp_has_none() -> None:
    assert import_cycles.cycles(import_cycles.graph(ROOT / "streamapp")) == []
