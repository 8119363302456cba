"""A short fixed-seed chaos run (issue 6, item 2): every fault kind once or more, a few hundred events,
and malformed records of every kind interleaved with them (each must be dead-lettered once, with its reason).

The driver brings its own broker (ports from the OS, a temp data dir), so the
broker it SIGKILLs is never the one the rest of the suite uses. Seed 1 over 60
seconds plans 10 faults: worker kills, pauses past the (shortened) session
timeout, a clean removal and an addition, and a broker kill.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chaos import faults

ROOT = Path(__file__).resolve().parents[2]
SEED, DURATION, GAP, SESSION_TIMEOUT = 1, 60, "3,8", 6
# The driver waits up to SETTLE seconds after the faults for every event to finish; what is
# still unfinished then counts as stuck or lost, so this is the bound a design must meet. A
# correct run settles in well under a minute even with other runs loading the machine.
SETTLE = 180
# Every phase of the driver is bounded (set-up 240 s, faults DURATION, settle SETTLE, the
# collection and the clean-up by their own timeouts) and it prints a progress line at least
# every 15 s while faults run and while it settles. Silent for SILENT_LIMIT seconds before
# its summary, it hung: only a broken driver or worker gets there, however slow the machine.
# (After the summary it stops what it started, quietly; only RUN_LIMIT applies then.)
SILENT_LIMIT = 300
RUN_LIMIT = 1500  # a last resort under pytest's timeout below, leaving the driver time to clean up
SUMMARY = re.compile(r"^faults=.*$", re.M)
BAD_RECORDS = 25  # 5 of each kind
# Every invariant the driver checks, crashes (a worker exiting on its own) and journaled
# re-runs included; a step re-run before its entry was durable (after a fault) is counted
# (``reruns``), not failed, and a re-run with no fault near it is a violation (exit code 1).
ZERO = ("lost", "stuck", "dead_lettered", "duplicated", "order_violations", "serial_violations", "overlaps",
        "stale_calls", "crashes", "journaled_reruns", "bad_missing", "bad_duplicated", "bad_wrong_reason")


def run_driver(args: list[str]) -> tuple[int, str]:
    """Run ``python -m chaos``; SIGTERM it (it stops what it started) if it goes silent or runs too long."""
    lines: list[str] = []
    heard = [time.monotonic()]  # when it last printed
    summarised = threading.Event()
    with subprocess.Popen([sys.executable, "-m", "chaos", *args], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                heard[0] = time.monotonic()
                if SUMMARY.match(line):
                    summarised.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        started = time.monotonic()
        while proc.poll() is None:
            silent = 0.0 if summarised.is_set() else time.monotonic() - heard[0]
            running = time.monotonic() - started
            if silent > SILENT_LIMIT or running > RUN_LIMIT:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                reader.join(10)
                why = f"printed nothing for {silent:.0f}s" if silent > SILENT_LIMIT else f"ran for {running:.0f}s"
                pytest.fail(f"chaos run {why}:\n{''.join(lines)[-6000:]}")
            time.sleep(1.0)
        reader.join(30)
    return proc.returncode, "".join(lines)


@pytest.mark.timeout(RUN_LIMIT + 300)
def test_chaos__short_fixed_seed_run__every_invariant_holds(tmp_path):
    planned = [a for a in faults.plan(SEED, DURATION, gap=(3, 8), session_timeout=SESSION_TIMEOUT) if a.is_fault]
    assert {a.kind for a in planned} == set(faults.FAULTS)
    code, out = run_driver([
        "--duration", str(DURATION), "--seed", str(SEED), "--gap", GAP, "--session-timeout", str(SESSION_TIMEOUT),
        "--events", "300", "--users", "20", "--bad-records", str(BAD_RECORDS), "--settle", str(SETTLE),
        "--workdir", str(tmp_path / "run"),
        "--save", str(tmp_path / "results"), "--allow-dirty",  # the suite runs from any tree
    ])
    summary = SUMMARY.search(out)
    assert summary is not None, f"no summary line:\n{out[-6000:]}"
    fields = dict(re.findall(r"(\w+)=(\d+)", summary.group(0)))
    print(summary.group(0))
    assert int(fields["faults"]) == len(planned)
    assert 0 < int(fields["faults_effective"]) <= len(planned)
    assert int(fields["events"]) == 300 and int(fields["bad_records"]) == BAD_RECORDS
    violations = "\n".join(line for line in out.splitlines() if "VIOLATION" in line)
    assert {k: int(fields[k]) for k in ZERO} == dict.fromkeys(ZERO, 0), violations[:6000]
    assert code == 0, f"chaos run failed ({code}); work dir {tmp_path / 'run'}:\n{out[-6000:]}"
    (saved,) = (tmp_path / "results").glob(f"*-seed{SEED}.json")
    kept = json.loads(saved.read_text())
    assert (kept["summary"], kept["seed"], kept["exit_status"]) == (summary.group(0), SEED, 0)
    assert kept["report"][0].startswith(f"chaos run: seed={SEED}") and "--allow-dirty" in kept["command"]
