"""The fault plan: what happens when, drawn from a seeded RNG before the run starts.

The plan is a pure function of its parameters, so a seed names one schedule:
the same faults, targets and delays in the same order (what the system does
in between still varies with timing). It simulates the cluster as it goes so
that every fault is possible when it is due:

    fault           needs                                   follow-up
    kill_worker     a running worker                        restart_worker after 0.5-4 s
    pause_worker    two running workers (one takes over)    resume_worker after session timeout + 3-10 s
    remove_worker   two running workers                     -
    add_worker      a free slot, stopped >= 15 s ago        -
    kill_broker     the broker up >= 15 s                   start_broker after 0-5 s

A worker is "running" when it is started, not paused and not killed. Only
faults count in ``faults=``; follow-ups undo them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FAULTS = ("kill_worker", "pause_worker", "remove_worker", "add_worker", "kill_broker")
WEIGHTS = {"kill_worker": 3.0, "pause_worker": 2.0, "remove_worker": 1.5, "add_worker": 1.5, "kill_broker": 1.5}
FOLLOW_UPS = ("restart_worker", "resume_worker", "start_broker")
READD_AFTER = 15.0  # a removed worker's slot is reused only this long after its clean stop
BROKER_UP_FOR = 15.0  # the broker is killed again only after it has been up this long


@dataclass(frozen=True)
class Action:
    at: float  # seconds after the fault phase starts
    kind: str  # one of FAULTS or FOLLOW_UPS
    target: str | None = None  # worker slot, None for the broker

    @property
    def is_fault(self) -> bool:
        return self.kind in FAULTS

    def __str__(self) -> str:
        return f"{self.kind}({self.target})" if self.target else self.kind


def plan(
    seed: int,
    duration: float,
    *,
    slots: tuple[str, ...] = ("w0", "w1", "w2"),
    initial: int = 2,
    gap: tuple[float, float] = (3.0, 12.0),
    session_timeout: float = 10.0,
    kinds: tuple[str, ...] = FAULTS,
) -> list[Action]:
    """Faults at random moments in [first gap, duration), each with its follow-up, sorted by time."""
    rng = random.Random(seed)
    state = {slot: ("running" if i < initial else "stopped") for i, slot in enumerate(slots)}
    stopped_at = {slot: -READD_AFTER for slot in slots}
    broker_up_since = 0.0
    broker_up = True
    pending: list[Action] = []  # follow-ups not yet applied to the simulated state
    actions: list[Action] = []
    now = 0.0

    def apply_follow_ups(until: float) -> None:
        nonlocal broker_up, broker_up_since
        for action in sorted((a for a in pending if a.at <= until), key=lambda a: a.at):
            pending.remove(action)
            if action.kind in ("restart_worker", "resume_worker"):
                state[action.target or ""] = "running"
            elif action.kind == "start_broker":
                broker_up, broker_up_since = True, action.at

    while True:
        now += rng.uniform(*gap)
        if now >= duration:
            break
        apply_follow_ups(now)
        running = sorted(s for s, st in state.items() if st == "running")
        free = sorted(s for s, st in state.items() if st == "stopped" and now - stopped_at[s] >= READD_AFTER)
        eligible = {
            "kill_worker": len(running) >= 1,
            "pause_worker": len(running) >= 2,
            "remove_worker": len(running) >= 2,
            "add_worker": bool(free),
            "kill_broker": broker_up and now - broker_up_since >= BROKER_UP_FOR,
        }
        choices = [k for k in kinds if eligible[k]]
        if not choices:
            continue
        kind = rng.choices(choices, weights=[WEIGHTS[k] for k in choices])[0]
        if kind == "kill_broker":
            actions.append(Action(now, kind))
            broker_up = False
            follow = Action(now + rng.uniform(0.0, 5.0), "start_broker")
        elif kind == "add_worker":
            target = free[0]
            actions.append(Action(now, kind, target))
            state[target] = "running"
            continue
        else:
            target = rng.choice(running)
            actions.append(Action(now, kind, target))
            if kind == "remove_worker":
                state[target], stopped_at[target] = "stopped", now
                continue
            if kind == "kill_worker":
                state[target] = "down"
                follow = Action(now + rng.uniform(0.5, 4.0), "restart_worker", target)
            else:
                state[target] = "paused"
                follow = Action(now + session_timeout + rng.uniform(3.0, 10.0), "resume_worker", target)
        pending.append(follow)
        actions.append(follow)
    return sorted(actions, key=lambda a: a.at)
