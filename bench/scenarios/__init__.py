"""The scenarios of issue 5, in the order they run. Each is ``run(Run, Result)``."""

from __future__ import annotations

from collections.abc import Callable

from bench.common import Result, Run
from bench.scenarios import expiry, failover, hol, latency, recovery, scaleout, throughput, timers

SCENARIOS: dict[str, Callable[[Run, Result], None]] = {
    "head-of-line": hol.run,
    "throughput": throughput.run,
    "latency": latency.run,
    "timers": timers.run,
    "recovery": recovery.run,
    "recovery-static": recovery.run_static,
    "failover": failover.run,
    "scale-out": scaleout.run,
    "expiry": expiry.run,
}
