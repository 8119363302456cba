"""An invocation finishes: its outcome row, its expiry index entry, and its key moves on."""

from __future__ import annotations

import time
from typing import Any

from streamapp.runtime import keyserial
from streamapp.runtime.actions import Action, Finished
from streamapp.runtime.commands import object_key
from streamapp.runtime.partition_state import PartitionState
from streamapp.runtime.store import expiry_key


def finish(st: PartitionState, rec: dict[str, Any], out: list[Action]) -> None:
    store = st.shared.store
    now = time.time()
    outcome, raw = st.shared.limits.fit_outcome(rec["id"], {
        "id": rec["id"], "service": rec["service"], "handler": rec["handler"], "key": rec["key"],
        "status": rec["status"], "result": rec.get("result"), "error": rec.get("error"),
        "code": rec.get("code"), "attempt": rec["attempt"], "created": rec["created"], "finished": now,
        "source": rec.get("source"),
        "journal": rec["journal"], "wake_at": None, "payload": rec.get("payload"),
        "at": store.positions.applying.get(st.p),  # the command that finished it (a purge reads it)
    })
    store.results.put(rec["id"], outcome, raw)
    store.expiry[expiry_key(now, rec["id"])] = rec["id"]  # same apply: both reach the changelog
    del store.invocations[rec["id"]]
    st.summary.pop(rec["id"], None)
    st.shared.recent.pop(rec["id"], None)
    st.drop_timer(rec["id"])
    out.append(Finished(rec))
    okey = object_key(rec["service"], rec["key"])
    if st.inflight.get(okey) == rec["id"]:
        del st.inflight[okey]
        keyserial.dispatch_next(st, okey, out)
