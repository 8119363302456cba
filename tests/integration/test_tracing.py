"""OpenTelemetry tracing against the real broker: a worker exporting spans to a file (STREAMAPP_TRACING_FILE)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests import harness
from tests.support.services import ledger

pytestmark = pytest.mark.broker

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
HTTP_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
HTTP_PARENT_ID = "b7ad6b7169203331"


def spans(path: Path) -> list[dict[str, Any]]:
    """The spans the worker exported so far (JSON lines; a line being written is skipped)."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def ids(span: dict[str, Any]) -> tuple[str, str | None]:
    """The span's trace id and parent span id, as the traceparent header spells them."""
    parent = span["parent_id"]
    return span["context"]["trace_id"].removeprefix("0x"), parent.removeprefix("0x") if parent else None


def of(found: list[dict[str, Any]], name: str, inv_id: str) -> list[dict[str, Any]]:
    return [s for s in found if s["name"] == name and s["attributes"].get("streamapp.invocation.id") == inv_id]


@pytest.fixture
def traced(app_env: dict[str, Any], tmp_path: Path) -> Path:
    path = tmp_path / "spans.jsonl"
    app_env["env"].update(STREAMAPP_TRACING="otel", STREAMAPP_TRACING_FILE=str(path),
                          OTEL_BSP_SCHEDULE_DELAY="100")  # export within 0.1 s of a span's end
    return path


def test_tracing__a_records_traceparent_is_the_parent_of_every_attempt_also_after_a_sleep_and_a_kill(
        workers: harness.WorkerFactory, app_env: dict[str, Any], traced: Path) -> None:
    worker = workers.new()
    record = json.dumps({"tag": "traced", "seconds": 6.0})
    harness.produce(app_env["source"], [("user1", record)],
                    headers=[("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01".encode())])
    before = harness.wait_for(lambda: [e for e in ledger(app_env["ledger"]) if e["event"] == "before"],
                              timeout=60, what="the first step", detail=worker.tail)
    inv_id = before[0]["inv"]
    harness.wait_for(lambda: of(spans(traced), "invoke Test/Nap", inv_id), timeout=30,
                     what="the first attempt's span", detail=worker.tail)
    worker.restart()  # kill -9 while it sleeps: the second attempt runs in a new process, from the restored row
    harness.wait_for(lambda: [e for e in ledger(app_env["ledger"]) if e["event"] == "after"],
                     timeout=90, what="the step after the sleep", detail=worker.tail)
    found = harness.wait_for(lambda: len(of(spans(traced), "invoke Test/Nap", inv_id)) >= 2 and spans(traced),
                             timeout=30, what="the second attempt's span", detail=worker.tail)

    first, second = of(found, "invoke Test/Nap", inv_id)
    for span in (first, second):
        assert ids(span) == (TRACE_ID, PARENT_ID)
        assert span["attributes"]["messaging.destination.name"] == app_env["source"]
        assert span["attributes"]["messaging.destination.partition.id"] == "0"
        assert span["attributes"]["messaging.kafka.offset"] == 0
        assert span["attributes"]["streamapp.key"] == "user1"
    assert first["attributes"]["streamapp.outcome"] == "suspended"
    assert second["attributes"]["streamapp.outcome"] == "completed"
    [step_before] = of(found, "before", inv_id)
    [step_after] = of(found, "after", inv_id)
    assert ids(step_before) == (TRACE_ID, first["context"]["span_id"].removeprefix("0x"))
    assert ids(step_after) == (TRACE_ID, second["context"]["span_id"].removeprefix("0x"))


def test_tracing__a_ctx_send_target_is_in_the_senders_trace_from_an_http_traceparent(
        workers: harness.WorkerFactory, app_env: dict[str, Any], traced: Path) -> None:
    worker = workers.new()
    status, body = worker.request("POST", "/Test/r1/Relay/send", {"tag": "relay", "to": "r2"}, headers={
        "traceparent": f"00-{HTTP_TRACE_ID}-{HTTP_PARENT_ID}-01"})
    assert status == 202, body
    received = harness.wait_for(lambda: [e for e in ledger(app_env["ledger"]) if e["event"] == "received"],
                                timeout=60, what="the target to run", detail=worker.tail)
    target_id = received[0]["inv"]
    def all_three() -> list[dict[str, Any]] | None:
        # The relay's attempt span may end (and be exported) after the target's.
        now = spans(traced)
        wanted = (("invoke Test/Relay", body["invocationId"]), ("send Test/Receive", body["invocationId"]),
                  ("invoke Test/Receive", target_id))
        return now if all(of(now, name, inv) for name, inv in wanted) else None

    found = harness.wait_for(all_three, timeout=30, what="the relay's, the send's and the target's spans",
                             detail=worker.tail)

    [relay] = of(found, "invoke Test/Relay", body["invocationId"])
    [send] = of(found, "send Test/Receive", body["invocationId"])
    [target] = of(found, "invoke Test/Receive", target_id)
    assert ids(relay) == (HTTP_TRACE_ID, HTTP_PARENT_ID)
    assert relay["attributes"]["streamapp.ingress"] == "http"
    assert ids(send) == (HTTP_TRACE_ID, relay["context"]["span_id"].removeprefix("0x"))
    assert ids(target) == (HTTP_TRACE_ID, send["context"]["span_id"].removeprefix("0x"))
    assert target["attributes"]["streamapp.parent.invocation.id"] == body["invocationId"]
