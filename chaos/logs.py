"""Evidence read from a run's files: worker logs, and (for work dirs kept by older drivers) report.txt.

Incarnations: a worker slot's log (``w0.log``) is appended to by one process
at a time; the driver writes ``==== chaos: starting w0.N at T`` before it
spawns incarnation N, and spawns it only after the previous one was reaped.
So the start marker above a line names the incarnation that wrote it. PIDs
do not: they wrap during a long run, and an incarnation started later can
get the PID of an earlier one. A line whose PID is not its incarnation's
(when the driver knows it) is not attributed to that incarnation.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chaos.checks import Activation
from chaos.steps import Disturbance, Entry, EpochStart

# Not anchored at a line's start: a killed incarnation may have left its last line unfinished before it.
START = re.compile(r"==== chaos: starting (\S+) at ([\d.]+)$", re.M)
ACTIVATED = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\] \[(\d+)\] \[\w+\] Partition activated partition=(\d+)", re.M
)


def activations_from_log(text: str, slot: str, pids: Mapping[str, int] | None = None) -> list[Activation]:
    """Every ``Partition activated`` line of one slot's log, named by the incarnation that logged it."""
    found = []
    starts = [(m.start(), m.group(1)) for m in START.finditer(text)]
    for m in ACTIVATED.finditer(text):
        t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
        pid = int(m.group(3))
        inc = next((name for pos, name in reversed(starts) if pos < m.start()), None)
        if inc is None or (pids is not None and pids.get(inc, pid) != pid):
            inc = f"{slot}.pid{pid}?"
        found.append(Activation(t, inc, int(m.group(4))))
    return found


def internal_commands(records: list[dict[str, Any]]) -> tuple[list[Entry], list[EpochStart]]:
    """Journal entries and activations from internal-topic records ({partition, offset, value})."""
    entries, epochs = [], []
    for rec in records:
        value = rec.get("value")
        if not isinstance(value, dict):
            continue
        if value.get("op") == "entry":
            entries.append(Entry(rec["partition"], rec["offset"], value["id"], value["index"], value["epoch"]))
        elif value.get("op") == "activate":
            epochs.append(EpochStart(rec["partition"], rec["offset"], value["epoch"]))
    return entries, epochs


# -- work dirs written before the driver recorded these itself -----------------------
FAULT_LINE = re.compile(r"^\[chaos \+\s*([\d.]+)s\] (?:fault #\d+ |undo )(\w+)(?:\((\w+)\))?: (.*)$")
CRASH_LINE = re.compile(r"^\[chaos \+\s*([\d.]+)s\] CRASH: (\S+) (.*); starting it again$")
STARTED = re.compile(r"^\[chaos \+\s*([\d.]+)s\] .*: started (\S+) \(pid \d+\)$")


def legacy_events(workdir: Path) -> list[Disturbance]:
    """Faults, undos and crashes from report.txt, placed in time by the start markers in the worker logs."""
    report = (workdir / "report.txt").read_text().splitlines()
    started_at = {}
    for log in workdir.glob("w*.log"):
        for m in START.finditer(log.read_text(errors="replace")):
            started_at[m.group(1)] = float(m.group(2))
    offsets = sorted(started_at[s.group(2)] - float(s.group(1))
                     for line in report if (s := STARTED.match(line)) and s.group(2) in started_at)
    if not offsets:
        return []
    t0 = offsets[len(offsets) // 2]
    events: dict[tuple[str, str, str | None], Disturbance] = {}  # a fault can take two lines
    for line in report:
        if c := CRASH_LINE.match(line):
            events[(c.group(1), "crash", c.group(2))] = Disturbance(t0 + float(c.group(1)), "crash", c.group(2),
                                                                    True, c.group(3))
        elif f := FAULT_LINE.match(line):
            key = (f.group(1), f.group(2), f.group(3))
            effective = "was not running" not in f.group(4) and (key not in events or events[key].effective)
            events[key] = Disturbance(t0 + float(f.group(1)), f.group(2), f.group(3), effective, f.group(4))
    return list(events.values())


def legacy_internal_commands(workdir: Path) -> tuple[list[Entry], list[EpochStart]]:
    """From evidence.jsonl (kept on failure; holds the commands of the invocations in violations)."""
    path = workdir / "evidence.jsonl"
    if not path.exists():
        return [], []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return internal_commands([r for r in records if r.get("topic", "").endswith("-invocations")])
