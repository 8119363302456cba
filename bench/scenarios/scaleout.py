"""Scale-out: the throughput workload on 2 workers sharing 8 internal partitions vs 1 worker.

The 1-worker figure is the throughput scenario's when it ran in this run
(same workload and partitions); otherwise it is measured here.
"""

from __future__ import annotations

import os

from bench.common import Result, Run
from bench.scenarios import throughput


def sizes(smoke: bool) -> dict[str, int]:
    return {**throughput.sizes(smoke), "workers": 2}


def run(r: Run, result: Result) -> None:
    p = sizes(r.smoke)
    result.parameters = p
    n, keys, parts = p["invocations"], p["keys"], p["internal_partitions"]
    one = r.memo.get("throughput_1_worker")
    if one is None:
        m1 = throughput.measure(r, "scale1", n, keys, 1, parts)
        one = m1.rate
        result.problems.extend(m1.problems)
        result.notes.append("1-worker figure measured in this scenario")
    else:
        result.notes.append("1-worker figure from the throughput scenario of this run")
    m2 = throughput.measure(r, "scale2", n, keys, p["workers"], parts)
    result.problems.extend(m2.problems)
    result.add(f"end-to-end invocations/s ({p['workers']} workers, {parts} partitions)", m2.rate, "inv/s",
               baseline=one, baseline_name="1 worker", higher_is_better=True)
    result.add("peak RSS of one worker (2 workers)", m2.rss_mb, "MB")
    result.notes.append(f"machine has {os.cpu_count()} cores; the bench process and the broker "
                        "share them with the workers")
