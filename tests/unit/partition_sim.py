"""Drives the partition state machine (streamapp/runtime/partition.py) with no engine, broker, task or clock.

``Machine`` applies commands to one partition's state over the in-memory
tables of ``engine_fakes``, with increasing offsets, and keeps the actions.
``rows`` is everything the tables hold, for comparing two runs.
"""

from __future__ import annotations

import types
from typing import Any

import pytest

from streamapp.runtime import finish as finish_module
from streamapp.runtime import ops
from streamapp.runtime import partition as partition_module
from streamapp.runtime import partition_state as state_module
from streamapp.runtime.actions import Action
from streamapp.runtime.partition import apply
from streamapp.runtime.partition_state import PartitionState, Shared
from tests.unit.engine_fakes import FakeTables

P = 1
NOW = 1_000.0


def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The state machine reads the wall clock only to stamp rows: fix it, so two runs write the same rows."""
    fake = types.SimpleNamespace(time=lambda: NOW, monotonic=lambda: 0.0)
    monkeypatch.setattr(partition_module, "time", fake)
    monkeypatch.setattr(finish_module, "time", fake)
    monkeypatch.setattr(state_module, "time", fake)


class Machine:
    def __init__(self, tables: FakeTables | None = None) -> None:
        self.tables = tables or FakeTables()
        self.state = PartitionState(P, Shared(self.tables))  # type: ignore[arg-type]
        self.offset = -1
        self.actions: list[Action] = []

    def restart(self) -> None:
        """The process starts again over the same tables: the state machine's memory is gone."""
        self.state = PartitionState(P, Shared(self.tables))  # type: ignore[arg-type]

    def apply(self, cmd: dict[str, Any], offset: int | None = None, index: int = 0) -> list[Action]:
        """Apply ``cmd`` as command ``index`` of the record at ``offset`` (default: the next record)."""
        if offset is None:
            offset = self.offset + 1
        self.offset = max(self.offset, offset)
        self.tables.current = P
        try:
            out = apply(self.state, offset, ops.parse(cmd), index)
        finally:
            self.tables.current = None
        self.actions.extend(out)
        return out

    def rows(self) -> dict[str, dict[str, Any]]:
        t = self.tables
        return {name: {k: v for k, (_, v) in getattr(t, name).rows.items()}
                for name in ("invocations", "results", "timers", "expiry", "state", "meta")}


def invoke(inv_id: str, key: str = "k", **extra: Any) -> dict[str, Any]:
    return {"op": "invoke", "id": inv_id, "service": "Svc", "handler": "h", "key": key, "payload": None, **extra}


def sleep_entry(wake_at: float) -> dict[str, Any]:
    return {"t": "sleep", "name": "sleep", "wake_at": wake_at}
