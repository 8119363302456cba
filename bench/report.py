"""The printed table and the JSON files: figures, parameters, versions and machine."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench.common import ROOT, Result, fmt


def versions() -> dict[str, str]:
    pom = (ROOT / "tools" / "kafka" / "pom.xml").read_text()
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    out = {"python": platform.python_version(), "kafka": match.group(1) if match else "unknown"}
    for dist in ("faust-streaming", "aiokafka", "mode-streaming", "rocksdict"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["streamapp"] = git_revision()
    return out


def git_revision() -> str:
    """The commit measured, marked ``+dirty`` when streamapp/ has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD") or "unknown"
        return rev + ("+dirty" if git("status", "--porcelain", "--", "streamapp") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "cpu": model, "os": platform.platform()}


def environment() -> dict[str, Any]:
    """Versions and machine, taken once at the start of a run (others may commit while it runs)."""
    return {"versions": versions(), "machine": machine()}


def write(result: Result, out_dir: Path, command: str, smoke: bool, when: datetime.datetime,
          env: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{when:%Y-%m-%d}-{result.scenario}.json"
    doc = {
        "scenario": result.scenario,
        "date": when.isoformat(timespec="seconds"),
        "command": command,
        "smoke": smoke,
        "ok": result.ok,
        "seconds": round(result.seconds, 1),
        "load_average_1min": {"before": result.load[0], "after": result.load[1]},
        "parameters": result.parameters,
        "figures": [
            {**dataclasses.asdict(f), "ratio": f.ratio, "verdict": f.verdict()} for f in result.figures
        ],
        "notes": result.notes,
        "problems": result.problems,
        **env,
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
        out.append(f"[{res.scenario}] {status} in {res.seconds:.0f} s "
                   f"(load average {res.load[0]:.1f} before, {res.load[1]:.1f} after)")
        out.extend(f"  - {line}" if not line.startswith("  ") else f"  {line}" for line in res.notes)
        out.extend(f"  ! {p}" for p in res.problems)
    return "\n".join(out)


def header(smoke: bool, env: dict[str, Any]) -> str:
    v, m = env["versions"], env["machine"]
    return (f"streamapp bench{' (smoke sizes)' if smoke else ''} - {datetime.date.today()} - "
            f"{m['cores']} cores, {m['memory_gb']} GB, {m['cpu']} - Python {v['python']}, Kafka {v['kafka']}, "
            f"faust-streaming {v['faust-streaming']}, aiokafka {v['aiokafka']}, streamapp {v['streamapp']}\n"
            f"command: {' '.join([Path(sys.executable).name, '-m', 'bench', *sys.argv[1:]])}")
