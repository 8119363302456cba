"""Broker-free tests of the invocation state machine (streamapp/runtime/engine.py)."""

from __future__ import annotations

from typing import Any

from streamapp.runtime import commands
from tests.unit.engine_fakes import EngineRig


def invoke(inv_id: str, key: str = "k", **extra: Any) -> dict[str, Any]:
    return {"op": "invoke", "id": inv_id, "service": "Svc", "handler": "h", "key": key, "payload": None,
            "not_before": None, "source": None, **extra}


def test_invoke__one_key_runs_in_order_and_other_keys_concurrently() -> None:
    rig = EngineRig()
    p = commands.partition_for("Svc/a", 4)
    epoch = rig.activate(p)
    rig.apply(p, invoke("i1", "a"))
    rig.apply(p, invoke("i2", "a"))
    assert [s[2] for s in rig.actors.started] == ["i1"]
    rig.apply(p, {"op": "complete", "id": "i1", "epoch": epoch, "attempt": 1, "result": 1, "state": {}})
    assert rig.status("i1") == "completed"
    assert [s[2] for s in rig.actors.started] == ["i1", "i2"]
