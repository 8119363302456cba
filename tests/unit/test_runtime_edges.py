"""Runtime edges without a broker: one actor per invocation, fail-stop on a failed apply, the stall fence
(and liveness while fenced)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from streamapp.config import Settings
from streamapp.durable.service import Registry
from streamapp.runtime import commands, faust_adapter
from streamapp.runtime.actors import ActorPool
from streamapp.runtime.app import EX_SOFTWARE, Runtime
from streamapp.runtime.ingress import RuntimeIngress


def recording_pool() -> tuple[ActorPool, list[dict[str, Any]]]:
    """An actor pool whose commands are recorded (no handler is registered: an attempt fails at once)."""
    sent: list[dict[str, Any]] = []

    async def send(p: int, okey: str, cmd: dict[str, Any]) -> None:
        sent.append(cmd)

    async def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    return ActorPool(Registry(), send, nothing, nothing, max_running=10), sent


async def test_actor_pool__starting_an_invocation_that_already_has_an_actor_runs_it_once() -> None:
    pool, sent = recording_pool()
    rec = {"id": "i1", "service": "Gone", "handler": "h", "key": "k", "attempt": 0, "journal": [], "payload": None}
    pool.start(0, "e1", rec, {})
    pool.start(0, "e1", dict(rec), {})  # e.g. a duplicate activation or fire
    await asyncio.sleep(0.05)
    assert [cmd["op"] for cmd in sent] == ["fail"], "one attempt, one outcome"


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    settings = Settings.from_env({"STREAMAPP_DATA_DIR": str(tmp_path), "STREAMAPP_APP_ID": "unit-edges",
                                  "STREAMAPP_SESSION_TIMEOUT": "6"})
    rt = Runtime(settings, Registry())
    yield rt
    if rt.recovering is not None:
        rt.recovering.cancel()


class Msg:
    topic, key, partition, offset = "t", b"k", 0, 7


async def test_apply_command__a_command_that_fails_to_apply_stops_the_worker(runtime: Runtime) -> None:
    def broken(p: int, offset: int, cmd: dict[str, Any]) -> None:
        from streamapp.runtime.engine import ApplyError
        raise ApplyError("op=invoke: disk full")

    runtime.engine.apply = broken  # type: ignore[method-assign]
    with pytest.raises(SystemExit) as exited:
        runtime.apply_command(Msg(), b'{"op":"invoke","id":"i","service":"S","handler":"h","key":"k"}')
    assert exited.value.code == EX_SOFTWARE


async def test_apply_command__a_malformed_command_is_reported_not_applied(runtime: Runtime) -> None:
    assert runtime.apply_command(Msg(), b'{"op":"invoke","id":"i"}') == "command op=invoke lacks service, handler, key"
    assert runtime.apply_command(Msg(), b"\xff") == "undecodable command"
    assert runtime.engine.applied == {}


async def test_stall__woken_worker_applies_nothing_and_waits_for_the_group_instead_of_reactivating(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rejoins: list[object] = []
    activations: list[object] = []
    monkeypatch.setattr(faust_adapter, "request_rejoin", lambda consumer: rejoins.append(consumer) or True)

    async def activate_assigned() -> None:
        activations.append(True)

    runtime.activate_assigned = activate_assigned  # type: ignore[method-assign]
    runtime.engine.leading[0] = "e1"
    runtime.engine.part(0).applied = 41
    runtime.engine.alive_at = time.monotonic() - 60  # frozen for a minute: expelled, for all it knows
    runtime.watch_stall()
    assert runtime.engine.live_partitions() == set()
    # Old behaviour: after a few heartbeats with no rebalance seen, reactivate on its own belief.
    await asyncio.sleep(3 * float(runtime.app.conf.broker_heartbeat_interval) + 1.5)
    assert activations == [], "ownership must come from the group, not from what the worker believed"
    assert rejoins, "the worker asks the group for a fresh assignment"
    assert runtime.engine.applied == {}, "tables are restored on the next assignment; read again from the commits"
    assert runtime.fenced(), "no command is applied meanwhile"
    runtime.generation = None
    runtime.on_assignment(set())
    assert not runtime.fenced(), "the group's assignment ends the fence"


async def test_stall__a_command_read_right_after_waking_is_fenced_before_the_tick_runs(runtime: Runtime) -> None:
    runtime.engine.leading[0] = "e1"
    runtime.engine.alive_at = time.monotonic() - 60
    assert runtime.fenced()
    assert runtime.engine.live_partitions() == set()


async def test_liveness__fails_while_fenced_after_a_stall_until_the_group_reassigns(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(faust_adapter, "request_rejoin", lambda consumer: True)
    ingress = RuntimeIngress(runtime)
    assert ingress.liveness()["live"] is True  # starting: no tick yet
    runtime.watch_stall()
    assert ingress.liveness() == {"live": True, "tick_age": ingress.liveness()["tick_age"]}
    runtime.engine.alive_at = time.monotonic() - 60  # frozen for a minute
    late = ingress.liveness()
    assert late["live"] is False and "late" in late["reason"], late
    runtime.watch_stall()  # the tick on waking: fenced
    runtime.watch_stall()  # ticking again, but still fenced
    fenced = ingress.liveness()
    assert fenced["live"] is False and "fenced" in fenced["reason"], fenced
    assert fenced["tick_age"] < 1
    assert runtime.metrics.stalls == 1
    runtime.generation = None
    runtime.on_assignment(set())  # the group's assignment ends the fence
    assert ingress.liveness()["live"] is True


async def test_actor_pool__once_stopping_starts_no_actor_and_running_ones_take_no_further_step() -> None:
    pool, sent = recording_pool()
    await pool.stop()  # SIGTERM: the worker stops its actors first, while its agent may still apply commands
    rec = {"id": "i1", "service": "Gone", "handler": "h", "key": "k", "attempt": 0, "journal": [], "payload": None}
    pool.start(0, "e1", rec, {})  # e.g. a completion applied meanwhile dispatches the key's next invocation
    await asyncio.sleep(0.05)
    assert pool.running() == 0 and sent == [], "an actor started after stop runs unsupervised into the shutdown"


async def test_apply_command__a_batch_applies_its_commands_in_order_and_reports_a_malformed_one(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    applied: list[tuple[int, int, str, int]] = []
    monkeypatch.setattr(runtime.engine, "apply",
                        lambda p, offset, cmd, index=0: applied.append((p, offset, cmd.op, index)))

    def invoke(inv_id: str) -> bytes:
        return commands.encode({"op": "invoke", "id": inv_id, "service": "S", "handler": "h", "key": "k"})

    value = commands.encode_batch([invoke("a"), b'{"op":"invoke","id":"x"}', invoke("b"), b'{"op":"batch","cmds":[]}'])
    reason = runtime.apply_command(Msg(), value)
    assert applied == [(0, 7, "invoke", 0), (0, 7, "invoke", 2)]
    assert reason == ("command 1 of the batch: command op=invoke lacks service, handler, key; "
                      "command 3 of the batch: not a command")


async def test_actor_pool__many_waiting_for_a_slot_cost_no_more_per_start() -> None:
    # 100,000 sleepers woken together wait for max_running slots: each start once
    # scanned every waiting attempt (quadratic: the timers bench stalled for minutes).
    pool, _ = recording_pool()
    pool.max_running = 1
    began = time.monotonic()
    for i in range(30_000):
        pool.start(0, "e1", {"id": f"i{i}", "service": "Gone", "handler": "h", "key": f"k{i}", "attempt": 0,
                             "journal": [], "payload": None}, {})
    pool.start(0, "e1", {"id": "i29999", "service": "Gone", "handler": "h", "key": "k", "attempt": 0,
                         "journal": [], "payload": None}, {})  # already waiting: not queued twice
    assert pool.waiting() == 29_999 and pool.running() == 1
    pool.cancel("i5")
    assert pool.waiting() == 29_998
    assert time.monotonic() - began < 5.0  # linear: well under a second; the quadratic scan took minutes
    await pool.stop()
