"""OpenTelemetry spans of invocations (streamapp/runtime/tracing.py), with no broker.

Attempts run in a real ``ActorPool``; their commands go to an ``EngineRig``
(the partition state machine over fake tables), whose rows feed the next
attempt: what the spans show is what survives in an invocation's row.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from streamapp.config import Settings
from streamapp.durable import ObjectContext, Registry, RetryPolicy, Service
from streamapp.durable.context import ObjectContext as PlainContext
from streamapp.runtime import tracing
from streamapp.runtime.actors import ActorPool
from tests.unit.engine_fakes import EngineRig

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
SOURCE = {"topic": "orders", "topic_id": "t1", "partition": 3, "offset": 42}

shop = Service("Shop", retry=RetryPolicy(initial_interval=1.0, max_attempts=3))


@shop.handler()
async def Order(ctx: ObjectContext) -> str:
    await ctx.run("charge", lambda: "paid")
    await ctx.sleep(60)
    await ctx.run("ship", lambda: "shipped")
    await ctx.send("Shop", "other", "Order")
    return "done"


@shop.handler()
async def Broken(ctx: ObjectContext) -> None:
    await ctx.run("charge", lambda: "paid")
    raise ConnectionError("backend down")


def _declined() -> None:
    raise ConnectionError("card service down")


@shop.handler()
async def StepFails(ctx: ObjectContext) -> None:
    await ctx.run("charge", _declined)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    yield exporter
    tracing.disable()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t


class Rig:
    """An actor pool whose commands the engine applies, and the targets of its sends."""

    def __init__(self) -> None:
        self.engine = EngineRig()
        self.p = 0
        self.epoch = self.engine.activate(self.p)
        self.invoked: list[dict[str, Any]] = []
        self.pool = ActorPool(Registry([shop]), self.send, self.invoke, self.dead_letter, max_running=4)
        self.pool.clock = Clock()  # type: ignore[assignment]

    async def send(self, p: int, okey: str, cmd: dict[str, Any]) -> None:
        self.engine.apply(self.p, cmd)

    async def invoke(self, target: dict[str, Any], parent: str) -> None:
        self.invoked.append(target)

    async def dead_letter(self, rec: dict[str, Any], error: str) -> None:
        pass

    def accept(self, handler: str, **fields: Any) -> str:
        self.engine.apply(self.p, {"op": "invoke", "id": "inv_1", "service": "Shop", "handler": handler,
                                   "key": "k", "payload": None, "not_before": None, "source": SOURCE, **fields})
        return "inv_1"

    async def attempt(self, inv_id: str) -> dict[str, Any]:
        """Run the invocation's next attempt from its row; the row as it is after the attempt."""
        rec = self.engine.tables.invocations.get(inv_id)
        self.pool.start(self.p, self.epoch, rec, {})
        await asyncio.gather(*self.pool.tasks.values())
        self.engine.actors.finished(inv_id)
        return self.engine.tables.invocations.get(inv_id) or self.engine.tables.results.get(inv_id)

    def fire(self, inv_id: str) -> None:
        rec = self.engine.tables.invocations.get(inv_id)
        self.engine.apply(self.p, {"op": "fire", "id": inv_id, "epoch": self.epoch, "at": rec["wake_at"]})


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def hex_ids(span: ReadableSpan) -> tuple[str, str | None]:
    assert span.context is not None
    parent = None if span.parent is None else f"{span.parent.span_id:016x}"
    return f"{span.context.trace_id:032x}", parent


async def test_attempts__a_sleeping_invocation_has_one_span_per_attempt_under_the_stored_traceparent(
        spans: InMemorySpanExporter) -> None:
    rig = Rig()
    inv_id = rig.accept("Order", trace={"traceparent": TRACEPARENT})
    row = await rig.attempt(inv_id)
    assert row["status"] == "sleeping" and row["trace"] == {"traceparent": TRACEPARENT}
    rig.fire(inv_id)
    row = await rig.attempt(inv_id)
    assert row["status"] == "completed"

    first, second = named(spans, "invoke Shop/Order")
    for span in (first, second):
        assert hex_ids(span) == (TRACE_ID, PARENT_ID)  # both attempts: children of the caller's span
        assert span.kind == SpanKind.CONSUMER
        attrs = dict(span.attributes or {})
        # A wake-up is not a retry: the attempt number counts failures (1 + retries so far).
        assert attrs["streamapp.invocation.id"] == inv_id and attrs["streamapp.attempt"] == 1
        assert [attrs[f"streamapp.{name}"] for name in ("service", "handler", "key")] == ["Shop", "Order", "k"]
        assert attrs["messaging.destination.name"] == "orders"
        assert attrs["messaging.destination.partition.id"] == "3" and attrs["messaging.kafka.offset"] == 42
    assert first.attributes is not None and first.attributes["streamapp.outcome"] == "suspended"
    assert second.attributes is not None and second.attributes["streamapp.outcome"] == "completed"
    assert second.attributes["streamapp.journal.replayed"] == 2  # charge and the sleep

    # "charge" ran in the first attempt only: replayed in the second, it makes no span.
    [charge] = named(spans, "charge")
    [ship] = named(spans, "ship")
    assert charge.parent is not None and first.context is not None
    assert charge.parent.span_id == first.context.span_id
    assert ship.parent is not None and second.context is not None
    assert ship.parent.span_id == second.context.span_id
    assert charge.attributes == {"streamapp.step.index": 0, "streamapp.step.replayed": False,
                                 "streamapp.invocation.id": inv_id}
    assert ship.attributes is not None and ship.attributes["streamapp.step.index"] == 2


async def test_send__the_target_invoke_carries_the_send_spans_context(spans: InMemorySpanExporter) -> None:
    rig = Rig()
    inv_id = rig.accept("Order", trace={"traceparent": TRACEPARENT})
    await rig.attempt(inv_id)
    rig.fire(inv_id)
    await rig.attempt(inv_id)

    [target] = rig.invoked
    [send] = named(spans, "send Shop/Order")
    assert send.kind == SpanKind.PRODUCER and send.context is not None
    assert target["trace"]["traceparent"] == f"00-{TRACE_ID}-{send.context.span_id:016x}-01"
    # The target's own attempt, run from that command, is in the same trace.
    rig.engine.apply(rig.p, {"op": "invoke", **target, "source": {"parent": inv_id}})
    await rig.attempt(target["id"])
    [target_span] = [s for s in named(spans, "invoke Shop/Order")
                     if s.attributes and s.attributes["streamapp.invocation.id"] == target["id"]]
    assert hex_ids(target_span) == (TRACE_ID, f"{send.context.span_id:016x}")
    assert target_span.attributes is not None
    assert target_span.attributes["streamapp.parent.invocation.id"] == inv_id


async def test_retry__the_attempt_span_has_an_error_status_and_the_exception(spans: InMemorySpanExporter) -> None:
    rig = Rig()
    inv_id = rig.accept("Broken", trace={"traceparent": TRACEPARENT})
    row = await rig.attempt(inv_id)
    assert row["status"] == "retrying"

    [span] = named(spans, "invoke Shop/Broken")
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "ConnectionError: backend down"
    assert span.attributes is not None and span.attributes["streamapp.outcome"] == "retry"
    [event] = [e for e in span.events if e.name == "exception"]
    assert event.attributes is not None and event.attributes["exception.type"] == "ConnectionError"
    assert "backend down" in str(event.attributes["exception.stacktrace"])

    rig.fire(inv_id)
    await rig.attempt(inv_id)
    _, second = named(spans, "invoke Shop/Broken")
    assert second.attributes is not None and second.attributes["streamapp.attempt"] == 2
    assert hex_ids(second) == (TRACE_ID, PARENT_ID)


async def test_step__a_step_that_raises_has_an_error_status_and_the_exception(spans: InMemorySpanExporter) -> None:
    rig = Rig()
    await rig.attempt(rig.accept("StepFails"))
    [step] = named(spans, "charge")
    assert step.status.status_code == StatusCode.ERROR
    assert [e.attributes["exception.type"] for e in step.events if e.attributes] == ["ConnectionError"]


async def test_off__no_spans_no_trace_field_and_the_plain_context(spans: InMemorySpanExporter) -> None:
    tracing.disable()
    assert tracing.context_class is PlainContext
    rig = Rig()
    inv_id = rig.accept("Order")
    row = await rig.attempt(inv_id)
    rig.fire(inv_id)
    await rig.attempt(inv_id)
    assert spans.get_finished_spans() == ()
    assert "trace" not in row
    [target] = rig.invoked
    assert "trace" not in target


async def test_attempt__a_stored_trace_that_does_not_parse_still_runs_as_a_new_trace(
        spans: InMemorySpanExporter) -> None:
    rig = Rig()
    inv_id = rig.accept("Broken", trace={"traceparent": 7})
    row = await rig.attempt(inv_id)
    assert row["status"] == "retrying"  # the handler ran
    [span] = named(spans, "invoke Shop/Broken")
    assert span.parent is None


def test_stamp__keeps_a_valid_traceparent_and_its_tracestate(spans: InMemorySpanExporter) -> None:
    assert tracing.active is not None
    target: dict[str, Any] = {"id": "inv_1", "service": "Shop", "handler": "Order"}
    tracing.active.stamp(target, {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}, {})
    assert target["trace"] == {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
    assert spans.get_finished_spans() == ()


@pytest.mark.parametrize("headers", [{}, {"traceparent": "00-nothex-00f067aa0ba902b7-01"}])
def test_stamp__without_a_valid_traceparent_an_accept_span_starts_the_trace(
        spans: InMemorySpanExporter, headers: dict[str, str]) -> None:
    assert tracing.active is not None
    target: dict[str, Any] = {"id": "inv_1", "service": "Shop", "handler": "Order"}
    tracing.active.stamp(target, headers, {"streamapp.ingress": "http"})
    [accept] = spans.get_finished_spans()
    assert accept.name == "accept Shop/Order" and accept.parent is None and accept.context is not None
    assert accept.attributes == {"streamapp.invocation.id": "inv_1", "streamapp.ingress": "http"}
    ctx = accept.context
    assert target["trace"] == {"traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"}


def test_kafka_headers__reads_the_trace_headers_of_a_record() -> None:
    headers = [("other", b"x"), ("traceparent", TRACEPARENT.encode()), ("tracestate", b"a=1")]
    assert tracing.kafka_headers(headers) == {"traceparent": TRACEPARENT, "tracestate": "a=1"}
    assert tracing.kafka_headers({"traceparent": TRACEPARENT.encode()}) == {"traceparent": TRACEPARENT}
    assert tracing.kafka_headers(None) == {}


def test_settings__tracing_is_off_unless_asked_and_checked() -> None:
    assert Settings.from_env({}).tracing == "off"
    on = Settings.from_env({"STREAMAPP_TRACING": "otel", "STREAMAPP_TRACING_FILE": "/tmp/spans.jsonl"})
    assert (on.tracing, str(on.tracing_file)) == ("otel", "/tmp/spans.jsonl")
    with pytest.raises(SystemExit, match="must be off or otel"):
        Settings.from_env({"STREAMAPP_TRACING": "jaeger"})
    with pytest.raises(SystemExit, match="STREAMAPP_TRACING is off"):
        Settings.from_env({"STREAMAPP_TRACING_FILE": "/tmp/spans.jsonl"})


def test_without_opentelemetry__the_runtime_imports_and_otel_is_refused_with_the_extra_named() -> None:
    script = """
import sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
from streamapp.config import Settings
from streamapp.runtime import actors, sources, tracing, web
assert tracing.trace is None and tracing.active is None
tracing.configure(Settings.from_env({}))
try:
    Settings.from_env({"STREAMAPP_TRACING": "otel"})
except SystemExit as exc:
    print(exc)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMAPP_")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'streamapp[otel]'" in out.stdout
