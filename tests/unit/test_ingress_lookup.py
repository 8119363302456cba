"""``GET /invocations/{id}`` answers from the tables of a partition this worker drives, never from a standby copy."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from streamapp.config import Settings
from streamapp.runtime.commands import object_key, partition_for
from streamapp.runtime.ingress import RuntimeIngress

PARTITIONS = 4


def ingress(live: set[int], invocations: dict[str, Any], results: dict[str, Any]) -> RuntimeIngress:
    engine = SimpleNamespace(live_partitions=lambda: live, is_running=lambda inv_id: False)
    runtime = SimpleNamespace(settings=Settings(partitions=PARTITIONS), registry=None, engine=engine,
                              tables=SimpleNamespace(invocations=invocations, results=results))
    return RuntimeIngress(runtime)  # type: ignore[arg-type]


def key_on(partition: int) -> str:
    return next(k for k in (f"k{i}" for i in range(1000))
                if partition_for(object_key("S", k), PARTITIONS) == partition)


def test_lookup__a_driven_partitions_invocation_or_outcome_is_answered_here() -> None:
    pending = {"id": "a", "service": "S", "key": key_on(1), "status": "pending"}
    done = {"id": "b", "service": "S", "key": key_on(1), "status": "completed"}
    found = ingress({1}, {"a": pending}, {"b": done})
    assert found.lookup("a") == (pending, False)
    assert found.lookup("b") == (done, False)


def test_lookup__a_standby_copy_of_another_workers_partition_is_not_an_answer() -> None:
    # A standby replica holds the other worker's rows, possibly behind: the peer that drives it answers.
    stale = {"id": "a", "service": "S", "key": key_on(2), "status": "pending"}
    outcome = {"id": "b", "service": "S", "key": key_on(3), "status": "completed"}
    assert ingress({0, 1}, {"a": stale}, {"b": outcome}).lookup("a") is None
    assert ingress({0, 1}, {"a": stale}, {"b": outcome}).lookup("b") is None
