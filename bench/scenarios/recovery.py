"""Recovery: SIGKILL a worker holding N unfinished invocations, restart it, time the catch-up.

The handler's first step waits for a gate file, so before the kill every
invocation is durable but none can finish: up to ``max_running`` are
running (blocked in the gate step) and the rest queue behind their keys.
The kill comes once the worker has committed what it holds, so every run
restores the same state from the changelogs (a kill before a commit adds
the replay of the records past it, which varied the figure by seconds).
The gate is opened, the worker restarted on the same data dir, and the
clock runs from the restart (process spawn) to the first and the last
completion. Nothing lost = every invocation completed exactly once after
the restart and the ledger names each one.

``recovery-static`` is the same with static group membership
(``STREAMAPP_INSTANCE_ID``): the restarted worker takes its place in the
group back at once instead of waiting for the killed member's session to
expire.
"""

from __future__ import annotations

import json
import os
import time

from bench import profile
from bench.common import Health, Result, Run, alive, poll, read_ledger, totals, uncommitted
from streamapp.config import Settings
from tests import harness

TARGET_FIRST = 10.0  # seconds, issue 5
TARGET_FIRST_STATIC = 3.0  # seconds, issue 13


def sizes(smoke: bool) -> dict[str, int]:
    return {"invocations": 300 if smoke else 10_000, "keys": 30 if smoke else 1_000, "source_partitions": 1}


def run(r: Run, result: Result) -> None:
    measure(r, result, static=False)


def run_static(r: Run, result: Result) -> None:
    measure(r, result, static=True)


def measure(r: Run, result: Result, static: bool) -> None:
    p = sizes(r.smoke)
    n, keys = p["invocations"], p["keys"]
    src = r.topic("recovery", 1)
    env = {"STREAMAPP_INSTANCE_ID": harness.unique("bench-recovery")} if static else {"STREAMAPP_INSTANCE_ID": ""}
    factory = r.workers("recovery", {src: "Bench/Gated"}, env)
    worker = factory.new()
    session = float({**os.environ, **factory.env}.get("STREAMAPP_SESSION_TIMEOUT", Settings().session_timeout))
    result.parameters = {**p, "session_timeout_s": session, "static_membership": static}
    health = Health(worker)
    start = time.time()
    harness.produce(src, [(f"k{i % keys}", json.dumps({"i": i})) for i in range(n)])

    def holding() -> bool:
        h = totals([health])
        return h["running"] + h["pending"] + h["completed"] + h["failed"] >= n

    poll(holding, timeout=60 + n / 20, what=f"{n} invocations held", interval=0.1, alive=alive(worker),
         detail=lambda: totals([health]))
    h = totals([health])
    if h["completed"]:
        result.problems.append(f"{h['completed']} invocations completed through a closed gate")
    result.notes.append(f"held before the kill: running={h['running']} pending={h['pending']} "
                        f"(ingested in {time.time() - start:.1f} s)")
    # Killed once the worker has committed what it holds (its tables' rows are in the changelogs): the
    # restart then restores 10,000 invocations and replays nothing. Killed earlier, a restart also
    # replays the records past the last commit (up to a commit interval's worth), whatever the design.
    topics = [src, f"{factory.app_id}-invocations"]
    poll(lambda: uncommitted(factory.app_id, topics) == 0, timeout=60, what="the held records committed",
         interval=0.2, alive=alive(worker))

    worker.kill()
    health.close()
    (factory.base / "gate").touch()
    restart = time.time()
    worker.start(wait=False)
    spied = r.base / f"recovery-{'static' if static else 'dynamic'}.pyspy.txt"
    spy = profile.record(worker.proc.pid, spied, seconds=8) if r.profile else None  # type: ignore[union-attr]
    check = alive(worker)
    # Both watched from the restart on: the first completion can come before every partition is
    # driven again (the worker is ready only once all are), so it is not polled after readiness.
    seen: dict[str, float] = {}

    def watch(name: str) -> bool:
        h = health.get() or {}
        now = time.time()
        if h.get("ready"):
            seen.setdefault("ready", now)
        if (h.get("completed") or 0) >= 1:
            seen.setdefault("first", now)
        return name in seen

    first = poll(lambda: watch("first"), timeout=120, what="the first completion", interval=0.02, alive=check,
                 detail=lambda: totals([health]))
    ready = poll(lambda: watch("ready"), timeout=120, what="the restarted worker", interval=0.02, alive=check)
    first, ready = seen["first"], seen["ready"]
    last = poll(lambda: totals([health])["completed"] >= n, timeout=120 + n / 20, what=f"{n} completions",
                interval=0.05, alive=check, detail=lambda: totals([health]))
    if spy is not None:
        spy.wait()
        result.notes.extend(profile.summary(spied))
    h = totals([health])
    done = [e["i"] for e in read_ledger(factory.base / "ledger.jsonl")]
    lost = n - len(set(done))
    if lost or h["failed"] or h["completed"] != n:
        result.problems.append(f"lost={lost} completed={h['completed']} failed={h['failed']} (expected {n})")
    result.notes.append(f"after restart: ledger has {len(set(done))} distinct of {n} "
                        f"({len(done) - len(set(done))} repeated steps); nothing lost" if not lost else "LOST")

    if static:
        result.notes.append(f"static membership: the restarted worker takes the killed member's place in the group "
                            f"at once (session timeout {session:.0f} s not waited for)")
    else:
        result.notes.append(f"a restarted worker rejoins the consumer group only once the broker expires the killed "
                            f"member's session (session timeout {session:.0f} s), so 'ready' cannot come sooner")
    result.add("restart -> worker ready", ready - restart, "s")
    result.add("restart -> first completion", first - restart, "s",
               target=TARGET_FIRST_STATIC if static else TARGET_FIRST)
    result.add(f"restart -> all {n:,} completed", last - restart, "s")
    result.add("catch-up rate after the first completion", (n - 1) / max(last - first, 1e-9), "inv/s",
               higher_is_better=True)
