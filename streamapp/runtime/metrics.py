"""Prometheus metrics of one worker: ``GET /metrics`` (text exposition format, ``streamapp_`` prefix).

Each runtime has its own ``CollectorRegistry`` (several apps can live in one
process, in tests). Almost nothing is done on the hot path:

    what                                  kept as                          exported
    counters (invocations, commands,      plain ints / ``Counter`` dicts   read at scrape time by
      records, dead letters, pauses...)   on the component that counts     ``RuntimeCollector``
                                          (one increment where it happens)
    gauges (queues, timers, lags,         nothing: the runtime's own       computed at scrape time
      actors, readiness)                  state                            by ``RuntimeCollector``
    durations (invocation, step,          ``prometheus_client`` histograms  as they are
      timer lateness)                     (one ``observe`` per event)

Label cardinality is bounded: service and handler names (from the code),
partitions (the app's partition count), topics (the app's), and a dead
letter's reason as a category (``reason_label``: the error's class name, at
most ``MAX_REASONS`` of them). Invocation ids and keys are never labels: the
keys with the longest queues are served as JSON by ``top_keys``
(``GET /metrics/top-keys?n=10``), computed when asked.
"""

from __future__ import annotations

import heapq
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from faust.types import TP
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from streamapp.runtime.app import Runtime

PREFIX = "streamapp_"
INVOCATION_EVENTS = ("started", "completed", "failed", "retried", "paused", "dead_lettered")
MAX_REASONS = 50  # distinct dead-letter reasons per worker; later ones count as "other"
TOP_KEYS_MAX = 1000
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)
_CLASS = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]{0,79})(?::|$)")


def reason_label(error: str) -> str:
    """A dead letter's reason as a bounded label: the error's class name (``TerminalError: ...``), else the
    text up to the first digit or quote (``key longer than``), at most 40 characters."""
    match = _CLASS.match(error)
    if match:
        return match.group(1)
    return re.split(r"[0-9'\"{(\[]", error, maxsplit=1)[0].strip()[:40] or "other"


class Metrics:
    """The registry and the hot-path tallies of one worker (components hold a reference and count)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # (event, service, handler) -> count; event in INVOCATION_EVENTS
        self.invocations: Counter[tuple[str, str, str]] = Counter()
        self.dead_letters: Counter[str] = Counter()  # reason label -> dead letters written
        self.rebalances = 0
        self.activations = 0
        self.stalls = 0
        self.duration = Histogram(
            PREFIX + "invocation_duration_seconds",
            "End-to-end invocation latency: accepted in its key's inbox to finished (completed or failed).",
            ["service", "handler"], registry=self.registry, buckets=DURATION_BUCKETS)
        self.step = Histogram(
            PREFIX + "step_duration_seconds",
            "Duration of a durable step (ctx.run): the function, then its journal entry acknowledged and applied.",
            ["service", "handler"], registry=self.registry, buckets=DURATION_BUCKETS)
        self.lateness = Histogram(
            PREFIX + "timer_lateness_seconds",
            "How late a durable timer (sleep, retry backoff, delayed send) was taken up after its due time.",
            registry=self.registry, buckets=LATENESS_BUCKETS)
        self._duration: dict[tuple[str, str], Any] = {}
        self._step: dict[tuple[str, str], Any] = {}

    # -- hot path --------------------------------------------------------------------------
    def count(self, event: str, service: str, handler: str) -> None:
        self.invocations[event, service, handler] += 1

    def finished(self, rec: dict[str, Any]) -> None:
        """An invocation finished here (``Finished`` applied): count it, observe its end-to-end latency."""
        labels = (rec["service"], rec["handler"])
        self.invocations[rec["status"], *labels] += 1
        child = self._duration.get(labels)
        if child is None:
            child = self._duration[labels] = self.duration.labels(*labels)
        child.observe(max(0.0, time.time() - rec["created"]))

    def step_done(self, service: str, handler: str, seconds: float) -> None:
        child = self._step.get((service, handler))
        if child is None:
            child = self._step[service, handler] = self.step.labels(service, handler)
        child.observe(seconds)

    def dead_lettered(self, error: str, service: str | None = None, handler: str | None = None) -> None:
        """A dead letter was written (of an invocation when ``service`` is given)."""
        reason = reason_label(error)
        if reason not in self.dead_letters and len(self.dead_letters) >= MAX_REASONS:
            reason = "other"
        self.dead_letters[reason] += 1
        if service is not None and handler is not None:
            self.invocations["dead_lettered", service, handler] += 1

    # -- scrape ----------------------------------------------------------------------------
    def attach(self, runtime: Runtime) -> Metrics:
        """Export ``runtime``'s counters and gauges too (read only when scraped)."""
        self.registry.register(RuntimeCollector(runtime))
        return self

    def render(self) -> bytes:
        return generate_latest(self.registry)


def top_keys(runtime: Runtime, n: int) -> list[dict[str, Any]]:
    """The ``n`` keys with the most invocations queued behind their running one, in partitions led here."""
    engine = runtime.engine
    led = [(p, st) for p in engine.live_partitions() if (st := engine.partitions.get(p)) is not None]
    longest = heapq.nlargest(min(n, TOP_KEYS_MAX),
                             ((len(queue), p, okey) for p, st in led for okey, queue in st.queues.items() if queue))
    out = []
    for queued, p, okey in longest:
        service, _, key = okey.partition("/")
        inflight = engine.partitions[p].inflight.get(okey)
        out.append({"service": service, "key": key, "partition": p, "queued": queued, "inflight": inflight})
    return out


class RuntimeCollector(Collector):
    """Counters kept by the runtime's components and gauges of its state, read at scrape time."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def describe(self) -> Iterable[Metric]:
        return []  # no fixed set of names to check for clashes: every scrape collects afresh

    def collect(self) -> Iterator[Metric]:
        yield from self._counters()
        yield from self._gauges()

    def _counters(self) -> Iterator[Metric]:
        rt, m = self.rt, self.rt.metrics
        for event in INVOCATION_EVENTS:
            family = CounterMetricFamily(PREFIX + f"invocations_{event}", f"Invocations {event.replace('_', '-')} "
                                         "on this worker, by service and handler.", labels=["service", "handler"])
            for (ev, service, handler), value in sorted(m.invocations.items()):
                if ev == event:
                    family.add_metric([service, handler], value)
            yield family
        counter = CounterMetricFamily
        yield _labelled(counter, "dead_letters", "Dead letters written, by reason (the error's class or category).",
                        "reason", m.dead_letters)
        yield _labelled(counter, "commands_applied", "Commands of the internal topic applied, by partition.",
                        "partition", rt.engine.applied_total)
        yield _labelled(counter, "records_written", "Records handed to the Kafka producer, by topic.",
                        "topic", getattr(rt.app.producer, "sent", {}))
        yield _labelled(counter, "source_batches_confirmed", "Source batches whose topic incarnation was confirmed, "
                        "by how: with the fetch that brought them, or asked of the broker.", "how",
                        rt.ingest.confirmed)
        yield from _scalars(CounterMetricFamily, (
            ("flow_control_pauses", "Times the sources were paused because too much work was pending.", rt.flow.pauses),
            ("rebalances", "Partition assignments received from the consumer group.", m.rebalances),
            ("partition_activations", "Partitions this worker took the lead of (its own activation applied).",
             m.activations),
            ("stall_watchdog_trips", "Times the stall watchdog fenced this worker (frozen past its limit).",
             m.stalls),
        ))

    def _gauges(self) -> Iterator[Metric]:
        rt = self.rt
        engine = rt.engine
        led = sorted(engine.live_partitions())
        queued = {p: st.queued() for p in led if (st := engine.partitions.get(p)) is not None}
        gauge = GaugeMetricFamily
        yield _labelled(gauge, "queued_invocations", "Invocations queued behind their key's running one, by partition "
                        "led here.", "partition", queued)
        yield _labelled(gauge, "sleeping_invocations", "Invocations waiting on a durable timer (sleep, retry backoff, "
                        "delayed send), by partition led here.", "partition", {p: rt.scheduler.count(p) for p in led})
        internal = rt.internal.get_topic_name()
        lag: dict[int, int] = {}
        for p, st in engine.partitions.items():
            highwater = rt.app.consumer.highwater(TP(internal, p))
            if highwater is not None:
                lag[p] = max(0, highwater - 1 - st.applied)
        yield _labelled(gauge, "apply_lag", "Commands in an internal partition not applied yet (highwater - applied).",
                        "partition", lag)
        source = GaugeMetricFamily(PREFIX + "source_consumer_lag",
                                   "Records of a source partition not read yet (highwater - position).",
                                   labels=["topic", "partition"])
        for tp, position in sorted(rt.delivery.guards["sources"].next.items()):
            highwater = rt.app.consumer.highwater(tp)
            if highwater is not None:
                source.add_metric([tp.topic, str(tp.partition)], max(0, highwater - position))
        yield source
        yield from _scalars(GaugeMetricFamily, (
            ("actors_running", "Invocation attempts running now (one task each).", rt.actors.running()),
            ("actors_waiting", "Attempts waiting for a slot (STREAMAPP_MAX_RUNNING).", rt.actors.waiting()),
            ("live_partitions", "Partitions this worker leads.", len(led)),
            ("ready", "1 once this worker drives every partition it was assigned (GET /readyz).", int(rt.ready())),
            ("fenced", "1 while the stall watchdog fences this worker (GET /livez fails).", int(rt.stalled)),
        ))


def _labelled(cls: type[CounterMetricFamily | GaugeMetricFamily], name: str, doc: str, label: str,
              values: dict[Any, int]) -> Metric:
    family = cls(PREFIX + name, doc, labels=[label])
    for value_label, value in sorted(values.items()):
        family.add_metric([str(value_label)], value)
    return family


def _scalars(cls: type[CounterMetricFamily | GaugeMetricFamily],
             rows: Iterable[tuple[str, str, float]]) -> Iterator[Metric]:
    for name, doc, value in rows:
        family = cls(PREFIX + name, doc)
        family.add_metric([], value)
        yield family
