"""A short fixed-seed chaos run (issue 6, item 2): every fault kind once or more, a few hundred events.

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
from pathlib import Path

import pytest

from chaos import faults

ROOT = Path(__file__).resolve().parents[2]
SEED, DURATION, GAP, SESSION_TIMEOUT = 1, 60, "3,8", 6
# Every invariant the driver checks, crashes (a worker exiting on its own) and journaled
# re-runs included; a step re-run before its entry was durable (after a fault) is counted
# (``reruns``), not failed, and a re-run with no fault near it is a violation (exit code 1).
ZERO = ("lost", "stuck", "dead_lettered", "duplicated", "order_violations", "serial_violations", "overlaps",
        "stale_calls", "crashes", "journaled_reruns")


def run_driver(args: list[str], timeout: float) -> tuple[int, str]:
    """Run ``python -m chaos``; on timeout SIGTERM it, so it stops the processes it started."""
    proc = subprocess.Popen([sys.executable, "-m", "chaos", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        pytest.fail(f"chaos run did not finish in {timeout:.0f}s:\n{out[-6000:]}")
    return proc.returncode, out


@pytest.mark.timeout(300)
def test_chaos__short_fixed_seed_run__every_invariant_holds(tmp_path):
    planned = [a for a in faults.plan(SEED, DURATION, gap=(3, 8), session_timeout=SESSION_TIMEOUT) if a.is_fault]
    assert {a.kind for a in planned} == set(faults.FAULTS)
    code, out = run_driver([
        "--duration", str(DURATION), "--seed", str(SEED), "--gap", GAP, "--session-timeout", str(SESSION_TIMEOUT),
        "--events", "300", "--users", "20", "--settle", "100", "--workdir", str(tmp_path / "run"),
        "--save", str(tmp_path / "results"), "--allow-dirty",  # the suite runs from any tree
    ], timeout=240)
    summary = re.search(r"^faults=.*$", out, re.M)
    assert summary is not None, f"no summary line:\n{out[-6000:]}"
    fields = dict(re.findall(r"(\w+)=(\d+)", summary.group(0)))
    print(summary.group(0))
    assert int(fields["faults"]) == len(planned)
    assert 0 < int(fields["faults_effective"]) <= len(planned)
    assert int(fields["events"]) == 300
    violations = "\n".join(line for line in out.splitlines() if "VIOLATION" in line)
    assert {k: int(fields[k]) for k in ZERO} == dict.fromkeys(ZERO, 0), violations[:6000]
    assert code == 0, f"chaos run failed ({code}); work dir {tmp_path / 'run'}:\n{out[-6000:]}"
    (saved,) = (tmp_path / "results").glob(f"*-seed{SEED}.json")
    kept = json.loads(saved.read_text())
    assert (kept["summary"], kept["seed"], kept["exit_status"]) == (summary.group(0), SEED, 0)
    assert kept["report"][0].startswith(f"chaos run: seed={SEED}") and "--allow-dirty" in kept["command"]
