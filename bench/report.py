"""The printed table and the JSON files: figures, parameters, and where they come from (``bench.provenance``)."""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any

from bench.common import Result, fmt


def write(result: Result, out_dir: Path, when: datetime.datetime, smoke: bool, prov: dict[str, Any]) -> Path:
    """One scenario's JSON: its figures, and where they come from (``provenance.record``)."""
    if result.load is None:
        raise ValueError(f"{result.scenario}: no load average taken; it is part of every result")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{when:%Y-%m-%d}-{result.scenario}.json"
    doc = {
        "scenario": result.scenario,
        "date": when.isoformat(timespec="seconds"),
        "smoke": smoke,
        "ok": result.ok,
        "seconds": round(result.seconds, 1),
        "load_average": {"before": result.load[0], "after": result.load[1]},  # 1, 5 and 15 minutes
        "parameters": result.parameters,
        "figures": [
            {**dataclasses.asdict(f), "ratio": f.ratio, "verdict": f.verdict()} for f in result.figures
        ],
        "notes": result.notes,
        "problems": result.problems,
        **prov,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


HEADER = ("scenario", "figure", "streamapp", "baseline (same run)", "ratio", "target", "verdict")


def table(results: list[Result]) -> str:
    rows: list[tuple[str, ...]] = [HEADER]
    for res in results:
        if not res.figures:
            rows.append((res.scenario, "(no figures)", "", "", "", "", "FAILED" if not res.ok else ""))
        for i, f in enumerate(res.figures):
            base = f"{fmt(f.baseline)} {f.unit}: {f.baseline_name}" if f.baseline is not None else ""
            ratio = (f"{f.ratio:.2f}x" if f.ratio >= 0.1 else f"{f.ratio:.2g}x") if f.ratio is not None else ""
            op = ">=" if f.higher_is_better else "<="
            target = f"{op} {fmt(f.target)}" if f.target is not None else ""
            rows.append((res.scenario if i == 0 else "", f.name, f"{fmt(f.value)} {f.unit}", base, ratio,
                         target, f.verdict()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def notes(results: list[Result]) -> str:
    out = []
    for res in results:
        status = "ok" if res.ok else "FAILED"
        load = (f"load average {res.load[0][0]:.1f} before, {res.load[1][0]:.1f} after" if res.load
                else "no load average")
        out.append(f"[{res.scenario}] {status} in {res.seconds:.0f} s ({load})")
        out.extend(f"  - {line}" if not line.startswith("  ") else f"  {line}" for line in res.notes)
        out.extend(f"  ! {p}" for p in res.problems)
    return "\n".join(out)


def header(smoke: bool, prov: dict[str, Any], load: list[float]) -> str:
    v, m = prov["versions"], prov["machine"]
    code = prov["revision"][:7] + ("+dirty" if prov["dirty"] else "")
    return (f"streamapp bench{' (smoke sizes)' if smoke else ''} - {datetime.date.today()} - "
            f"{m['cores']} cores, {m['memory_gb']} GB, {m['cpu']} - Python {v['python']}, Kafka {v['kafka']}, "
            f"faust-streaming {v['faust-streaming']}, aiokafka {v['aiokafka']}, streamapp {code} - "
            f"load average {' '.join(f'{x:.2f}' for x in load)}\n"
            f"command: {prov['command']}")
