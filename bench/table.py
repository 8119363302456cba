"""``python -m bench.table [FILE ...]``: the README's benchmark table, printed from kept result files.

Without arguments it reads the newest full-size file of each scenario in
``bench/results``. Every row names the file it comes from, with the revision
(``+dirty`` when the tree was) and the load average the scenario ran under,
so each figure in the README can be traced to a run of committed code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.common import ROOT, fmt

RESULTS = ROOT / "bench" / "results"


def newest(results: Path = RESULTS) -> list[Path]:
    """The newest file of each scenario (names are ``<date>-<scenario>.json``)."""
    latest: dict[str, Path] = {}
    for path in sorted(results.glob("*.json")):
        scenario = path.stem.split("-", 3)[-1]
        latest[scenario] = path  # sorted by date: the last one wins
    return sorted(latest.values())


def rows(path: Path) -> list[str]:
    data: dict[str, Any] = json.loads(path.read_text())
    # Files written before provenance was recorded carry no revision: say so.
    rev = "revision unrecorded"
    if "revision" in data:
        rev = data["revision"][:7] + ("+dirty" if data.get("dirty") else "")
    load = data.get("load_average") or {}
    la = f"{load['before'][0]:.1f}→{load['after'][0]:.1f}" if load.get("before") and load.get("after") else "?"
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    where = f"`{name}` ({rev}, load {la})"
    out = []
    for fig in data["figures"]:
        if fig.get("value") is None:
            continue
        value = f"{fmt(fig['value'])} {fig['unit']}"
        baseline = ""
        if fig.get("baseline") is not None:
            baseline = f"{fmt(fig['baseline'])} {fig['unit']} ({fig['baseline_name']}); ratio {fig['ratio']:.3g}"
        target = ""
        if fig.get("target") is not None:
            sign = "≥" if fig["higher_is_better"] else "≤"
            target = f"{sign} {fmt(fig['target'])}: {fig['verdict']}"
        out.append(f"| {data['scenario']} | {fig['name']} | {value} | {baseline} | {target} | {where} |")
    return out


def main(argv: list[str]) -> int:
    paths = [Path(a).resolve() for a in argv] or newest()
    print("| scenario | figure | streamapp | baseline (same run) | target | from |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in paths:
        for row in rows(path):
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
