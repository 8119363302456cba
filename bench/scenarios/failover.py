"""Failover: two workers hold N gated invocations; SIGKILL one; time until the survivor completes the dead one's work.

Both workers run the recovery scenario's gated handler over the same
internal partitions; once every invocation is held (durable, none able to
finish), one worker is killed and the gate opened. The survivor's own
invocations finish at once; the figure is the time from the kill to the
first completion, on the survivor, of an invocation of a partition the
killed worker drove (the handler's last step notes its time and pid in the
ledger). It cannot come before the group expires the killed member's session
(no restart here, so static membership does not help); what follows is the
rebalance, the restore of the moved partitions' tables and their
activation. Measured with ``STREAMAPP_STANDBY_REPLICAS`` 1 (the default:
the survivor kept the killed worker's tables warm) and 0 (it restores them
from the changelogs), back to back.
"""

from __future__ import annotations

import json
import os
import time

from bench.common import Health, Result, Run, alive, poll, read_ledger, totals
from streamapp.config import Settings
from streamapp.runtime.commands import object_key, partition_for
from tests import harness

SLACK = 2.0  # seconds past the session timeout, issue 13


def sizes(smoke: bool) -> dict[str, int]:
    return {"invocations": 300 if smoke else 10_000, "keys": 30 if smoke else 1_000, "workers": 2,
            "internal_partitions": 8}


def run(r: Run, result: Result) -> None:
    p = sizes(r.smoke)
    result.parameters = dict(p)
    for standbys in (1, 0):
        measure(r, result, p, standbys)


def measure(r: Run, result: Result, p: dict[str, int], standbys: int) -> None:
    n, keys, parts = p["invocations"], p["keys"], p["internal_partitions"]
    src = r.topic(f"failover{standbys}", 1)
    factory = r.workers(f"failover{standbys}", {src: "Bench/Gated"},
                        {"STREAMAPP_STANDBY_REPLICAS": str(standbys), "STREAMAPP_PARTITIONS": str(parts),
                         "STREAMAPP_INSTANCE_ID": ""})
    survivor, victim = (factory.new(start=False).start(wait=False) for _ in range(2))
    health = [Health(survivor), Health(victim)]
    check = alive(survivor, victim)

    def shared() -> bool:
        bodies = [h.get() or {} for h in health]
        return all(b.get("ready") and b.get("live_partitions") for b in bodies) and \
            sum(len(b["live_partitions"]) for b in bodies) == parts

    poll(shared, timeout=120, what="both workers sharing the partitions", interval=0.2, alive=check)
    session = float({**os.environ, **factory.env}.get("STREAMAPP_SESSION_TIMEOUT", Settings().session_timeout))
    harness.produce(src, [(f"k{i % keys}", json.dumps({"i": i})) for i in range(n)])

    def holding() -> bool:
        h = totals(health)
        return h["running"] + h["pending"] + h["completed"] + h["failed"] >= n

    poll(holding, timeout=60 + n / 20, what=f"{n} invocations held", interval=0.1, alive=check,
         detail=lambda: totals(health))
    moved = set((health[1].get() or {}).get("live_partitions", []))
    key_of = {i: f"k{i % keys}" for i in range(n)}
    from_victim = {i for i, key in key_of.items() if partition_for(object_key("Bench", key), parts) in moved}
    assert survivor.proc is not None
    victim.kill()
    killed = time.time()
    health[1].close()
    (factory.base / "gate").touch()
    last = poll(lambda: totals(health[:1])["completed"] >= n, timeout=120 + n / 20, what=f"{n} completions",
                interval=0.1, alive=alive(survivor), detail=lambda: totals(health[:1]))
    notes = read_ledger(factory.base / "ledger.jsonl")
    done = {e["i"] for e in notes}
    mine = [e["t"] for e in notes if e["pid"] == survivor.proc.pid and e["i"] in from_victim]
    label = f"standby replicas {standbys}"
    if len(done) != n:
        result.problems.append(f"{label}: {n - len(done)} invocations lost")
    if not mine:
        result.problems.append(f"{label}: the survivor completed none of the killed worker's invocations")
        return
    result.notes.append(f"{label}: killed worker drove partitions {sorted(moved)} holding {len(from_victim)} "
                        f"invocations; all {n} completed ({len(notes) - len(done)} repeated steps)")
    result.add(f"kill -> first completion of the killed worker's work on the survivor ({label})",
               min(mine) - killed, "s", target=session + SLACK)
    result.add(f"kill -> all {n:,} completed ({label})", last - killed, "s")
    factory.stop_all()
