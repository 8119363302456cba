"""OpenTelemetry spans of invocations (the ``otel`` extra); a no-op unless enabled.

Enabled by ``STREAMAPP_TRACING=otel`` (``configure``), never by the mere
presence of a tracer provider: a process may have one for other reasons
(auto-instrumentation of its HTTP clients), and spans of every invocation are
a cost the operator should choose. Off, ``active`` is None and the runtime
pays one module attribute check where an invocation is accepted and one where
an attempt starts; ``context_class`` is then plain ``ObjectContext``, so steps
pay nothing.

Spans (``streamapp.*`` attributes, plus OTel's messaging ones for Kafka):

    span                      kind      parent
    invoke Service/handler    CONSUMER  the invocation's stored trace context
    <step name> (ctx.run)     INTERNAL  the attempt span
    send Service/handler      PRODUCER  the attempt span; the target's trace context
    accept Service/handler    PRODUCER  none: made at ingress only when the caller sent no traceparent

One span per attempt: an invocation that sleeps, retries or is recovered by
another worker has one ``invoke`` span per attempt, all children of the same
stored context, so they are one trace. A step replayed from the journal makes
no span (its span is in the attempt that ran it); the attempt span counts
them (``streamapp.journal.replayed``).

Propagation: the W3C ``traceparent``/``tracestate`` of the HTTP request, or
of the Kafka record's headers, is stored with the invocation: the ``trace``
field of its ``invoke`` command and of its row in the ``invocations`` table
(``{"traceparent": ..., "tracestate": ...}``, only when traced), so it
survives suspensions, retries and restarts. A ``ctx.send`` stamps the target's
``invoke`` command with the context of its ``send`` span.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from streamapp.durable import executor
from streamapp.durable.context import ObjectContext

if TYPE_CHECKING:
    from streamapp.config import Settings

try:
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the otel extra is not installed: tracing stays off
    trace = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

HEADERS = ("traceparent", "tracestate")

active: Tracing | None = None  # set by ``enable``: the hot path's one check
context_class: type[ObjectContext] = ObjectContext  # what ``executor.execute`` builds for each attempt


def enable(provider: Any = None) -> Tracing:
    """Trace invocations with ``provider`` (the global tracer provider when None)."""
    global active, context_class
    active = Tracing(provider)
    context_class = TracedContext
    return active


def disable() -> None:
    global active, context_class
    active, context_class = None, ObjectContext


def configure(settings: Settings) -> None:
    """Enable tracing in a worker as ``settings`` ask (``STREAMAPP_TRACING``, ``STREAMAPP_TRACING_FILE``).

    A tracer provider set up before (``opentelemetry-instrument``, the
    embedding program) is used as it is, and also gets the file exporter when
    a file is set. Otherwise streamapp installs an SDK provider (service.name
    = the app id) exporting to the file, or to stderr, as JSON lines.
    """
    if settings.tracing != "otel":
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = trace.get_tracer_provider()
    configured = not isinstance(provider, trace.ProxyTracerProvider)
    out = open(settings.tracing_file, "a", encoding="utf-8") if settings.tracing_file else None
    if not configured:
        provider = TracerProvider(resource=Resource.create({"service.name": settings.app_id}))
        trace.set_tracer_provider(provider)
    if out is not None or not configured:
        exporter = ConsoleSpanExporter(out=out or sys.stderr, formatter=lambda span: span.to_json(indent=None) + "\n")
        if hasattr(provider, "add_span_processor"):
            provider.add_span_processor(BatchSpanProcessor(exporter))
        else:
            log.warning("The configured tracer provider takes no span processor: STREAMAPP_TRACING_FILE is not used")
    log.info("Tracing invocations with OpenTelemetry exporter=%s",
             settings.tracing_file or ("the configured provider's" if configured else "stderr"))
    enable()


def kafka_headers(headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None) -> dict[str, str]:
    """The trace context headers of a Kafka record (a list of pairs, or a mapping)."""
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    found = {}
    for name, value in pairs:
        if name in HEADERS and isinstance(value, bytes):
            found[name] = value.decode("latin-1")
    return found


class Tracing:
    def __init__(self, provider: Any = None) -> None:
        self.tracer = trace.get_tracer("streamapp", tracer_provider=provider)
        self.propagator = TraceContextTextMapPropagator()

    # -- propagation ---------------------------------------------------------
    def carrier(self, context: Any = None) -> dict[str, str] | None:
        """The W3C headers of ``context`` (the current one when None), or None when it has no valid span."""
        out: dict[str, str] = {}
        self.propagator.inject(out, context)
        return out or None

    def stamp(self, target: dict[str, Any], headers: Mapping[str, str], attributes: dict[str, Any]) -> None:
        """Give the new invocation ``target`` its trace context: the caller's, or a new trace.

        A traceparent that does not parse counts as none. Without one, an
        ``accept`` span (ended at once) starts the trace, so the invocation's
        attempts all belong to one trace with a real root.
        """
        incoming = {name: headers[name] for name in HEADERS if name in headers}
        trace_context = self.carrier(self.propagator.extract(incoming)) if incoming else None
        if trace_context is None:
            name = f"accept {target['service']}/{target['handler']}"
            with self.tracer.start_as_current_span(name, kind=SpanKind.PRODUCER, attributes={
                "streamapp.invocation.id": target["id"], **attributes,
            }):
                trace_context = self.carrier()
        if trace_context is not None:
            target["trace"] = trace_context

    def parent(self, stored: Any) -> Any:
        """The context a stored trace field names; None (a new trace) when it does not parse.

        The invocation must run whatever its row holds (a row written by
        another version, a hand-made command): tracing never stops it.
        """
        if not isinstance(stored, dict):
            return None
        try:
            return self.propagator.extract(stored)
        except (TypeError, ValueError, AttributeError):
            return None

    # -- spans -----------------------------------------------------------------
    async def attempt(self, rec: dict[str, Any], run: Coroutine[Any, Any, executor.Outcome]) -> executor.Outcome:
        """Run one attempt of ``rec`` (the actor's coroutine ``run``) in its span."""
        parent = self.parent(rec.get("trace"))
        attributes: dict[str, Any] = {
            "streamapp.invocation.id": rec["id"],
            "streamapp.service": rec["service"],
            "streamapp.handler": rec["handler"],
            "streamapp.key": rec["key"],
            "streamapp.attempt": rec["attempt"] + 1,
            "streamapp.journal.replayed": len(rec["journal"]),
            **source_attributes(rec.get("source")),
        }
        name = f"invoke {rec['service']}/{rec['handler']}"
        with self.tracer.start_as_current_span(name, context=parent, kind=SpanKind.CONSUMER,
                                               attributes=attributes) as span:
            outcome = await run
            record_outcome(span, outcome)
        return outcome


def source_attributes(source: Any) -> dict[str, Any]:
    """Where the invocation came from: Kafka coordinates, the sending invocation, or HTTP."""
    if not isinstance(source, dict):
        return {}
    if "topic" in source:
        return {"messaging.system": "kafka", "messaging.destination.name": str(source["topic"]),
                "messaging.destination.partition.id": str(source.get("partition")),
                "messaging.kafka.offset": int(source.get("offset", -1))}
    if source.get("parent"):
        return {"streamapp.parent.invocation.id": str(source["parent"])}
    if "http" in source:
        return {"streamapp.ingress": "http"}
    return {}


def record_outcome(span: Any, outcome: executor.Outcome) -> None:
    """The attempt's outcome on its span: an error status and exception event unless it completed or parked."""
    if isinstance(outcome, executor.Completed):
        span.set_attribute("streamapp.outcome", "completed")
        return
    if isinstance(outcome, executor.Parked):
        span.set_attribute("streamapp.outcome", "suspended")
        span.set_attribute("streamapp.wake_at", outcome.wake_at)
        return
    kind = {executor.Retry: "retry", executor.Failed: "failed", executor.Paused: "paused"}[type(outcome)]
    span.set_attribute("streamapp.outcome", kind)
    exc = getattr(outcome, "exc", None)
    if exc is not None:
        span.record_exception(exc)
    else:
        span.add_event("exception", {"exception.type": outcome.error.partition(":")[0],
                                     "exception.message": outcome.error})
    span.set_status(Status(StatusCode.ERROR, outcome.error))


class TracedContext(ObjectContext):
    """``ObjectContext`` whose live steps and sends are spans (replayed ones are not)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["sink"] = _TracingSink(kwargs["sink"])
        super().__init__(**kwargs)

    def _live(self) -> bool:
        return self.step_index >= len(self._journal)

    async def run(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        if active is None or not self._live():
            return await super().run(name, fn, *args)
        with active.tracer.start_as_current_span(name, attributes={
            "streamapp.step.index": self.step_index, "streamapp.step.replayed": False,
            "streamapp.invocation.id": self.invocation_id,
        }):
            return await super().run(name, fn, *args)

    async def send(self, service: str, key: str, handler: str, payload: Any = None, *, delay: float = 0.0) -> str:
        if active is None or not self._live():
            return await super().send(service, key, handler, payload, delay=delay)
        with active.tracer.start_as_current_span(f"send {service}/{handler}", kind=SpanKind.PRODUCER, attributes={
            "streamapp.step.index": self.step_index, "streamapp.invocation.id": self.invocation_id,
            "streamapp.target.service": service, "streamapp.target.handler": handler, "streamapp.target.key": key,
        }):
            return await super().send(service, key, handler, payload, delay=delay)


class _TracingSink:
    """The attempt's journal sink; a send's target gets the current (``send``) span's trace context."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:  # append, before_step: the runtime's own
        return getattr(self._inner, name)

    async def append(self, entry: dict[str, Any]) -> None:
        await self._inner.append(entry)

    async def send(self, target: dict[str, Any]) -> None:
        trace_context = active.carrier() if active is not None else None
        await self._inner.send({**target, "trace": trace_context} if trace_context else target)
