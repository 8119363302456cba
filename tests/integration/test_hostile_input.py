"""Hostile records on every subscribed topic: each is dead-lettered with its reason, nothing else stalls.

One worker subscribes three topics (the test service and both seed
handlers). On each, bad records are interleaved with valid ones: random
bytes, invalid UTF-8, JSON of the wrong shape, 100k-deep nesting, numbers
JSON cannot carry back out, a 5 MB value, null/empty/invalid keys and
values, a 10 kB key. The source topics accept 8 MB records (a source may be
configured so); the dead-letter topic keeps the broker's default limit
(~1 MB), as the one the worker creates for itself would.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamapp.durable import ids
from tests import harness
from tests.support.services import ledger

SOURCE_MAX_BYTES = 8 * 1024 * 1024
BIG = 5 * 1024 * 1024
DEEP = 100_000


@dataclass
class Case:
    name: str
    key: bytes | None
    value: bytes | None
    reason: str | None  # None: valid, must complete; else a substring of the dead letter's streamapp.error
    offset: int = -1


def create_big_topics(names: list[str]) -> None:
    async def go() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=harness.bootstrap())
        await admin.start()
        try:
            await admin.create_topics([
                NewTopic(n, 1, 1, topic_configs={"max.message.bytes": str(SOURCE_MAX_BYTES)}) for n in names
            ])
        finally:
            await admin.close()

    harness.run_async(go())


def produce_cases(topic: str, cases: list[Case]) -> None:
    """Produce in order (one in flight: offsets follow list order); record each offset."""

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=harness.bootstrap(), acks="all",
                                    max_request_size=16 * 1024 * 1024, max_batch_size=16 * 1024 * 1024)
        await producer.start()
        try:
            for case in cases:
                meta = await producer.send_and_wait(topic, key=case.key, value=case.value)
                case.offset = meta.offset
        finally:
            await producer.stop()

    harness.run_async(go())


def hostile(valid_key: bytes, valid: bytes, wrong_shapes: list[tuple[bytes, str]], rng: random.Random) -> list[Case]:
    """Bad records for one handler (its valid value and wrongly shaped ones), each followed by a valid record."""
    obj = json.loads(valid)
    field = next(iter(obj))
    big = json.dumps({**obj, field: "x" * BIG}).encode()
    bad = [
        Case("random bytes", valid_key, b"\xff" + rng.randbytes(300), "not valid UTF-8"),
        Case("invalid UTF-8 in a JSON string", valid_key,
             json.dumps({**obj, field: "caf@"}).encode().replace(b"@", b"\xc3\x28"), "not valid UTF-8"),
        Case("not JSON", valid_key, b"{" + valid, "not valid JSON"),
        Case("NaN", valid_key, valid[:-1] + b', "n": NaN}', "NaN is not allowed"),
        Case("100k nested arrays", valid_key, b"[" * DEEP + b"]" * DEEP, "nested"),
        Case("100k nested objects", valid_key, b'{"a":' * DEEP + b"1" + b"}" * DEEP, "nested"),
        Case("200 nested arrays (below the recursion limit)", valid_key, b"[" * 200 + b"]" * 200,
             "nested deeper than 64"),
        Case("an integer of 5000 digits", valid_key, valid[:-1] + b', "n": 1' + b"0" * 5000 + b"}",
             "not valid JSON"),
        Case("a number beyond a double (1e400)", valid_key, valid[:-1] + b', "n": 1e400}', "out of range"),
        Case("an integer beyond 64 bits", valid_key, valid[:-1] + b', "n": 123456789012345678901234567890}',
             "out of range (64 bits)"),
        Case("a lone surrogate escape", valid_key, valid[:-1] + b', "n": "\\ud800"}', "lone UTF-16 surrogate"),
        Case("a lone surrogate escape in a name", valid_key, valid[:-1] + b', "\\udfff": 1}',
             "lone UTF-16 surrogate"),
        Case("5 MB value", valid_key, big, "too large"),
        Case("800 kB that escaping makes 2.4 MB", valid_key,
             json.dumps({**obj, field: "\u00e9" * 400_000}, ensure_ascii=False).encode(),
             "invocation too large for the internal topic"),
        Case("null key", None, valid, "no key"),
        Case("empty value", valid_key, b"", "empty value"),
        Case("null value (tombstone)", valid_key, None, "empty value"),
        Case("10 kB key", b"k" * 10_240, valid, "key longer than"),
        Case("invalid UTF-8 key", b"\xc3\x28key", valid, "key is not valid UTF-8"),
        *(Case(f"wrong shape {raw[:40]!r}", valid_key, raw, reason) for raw, reason in wrong_shapes),
    ]
    out: list[Case] = []
    for i, case in enumerate(bad):
        out.append(case)
        out.append(Case(f"valid #{i}", valid_key, valid, None))
    return out


@pytest.mark.timeout(240)
def test_hostile_records__each_dead_lettered_with_reason_and_coordinates__valid_ones_complete__no_restart(
    workers, app_env
):
    rng = random.Random(6)
    nap_topic, loc_topic, post_topic = (harness.unique(p) for p in ("hostile-nap", "hostile-loc", "hostile-post"))
    create_big_topics([nap_topic, loc_topic, post_topic])
    worker = workers.new(env={
        "STREAMAPP_SUBSCRIPTIONS": (f"{nap_topic}=Test/Nap,{loc_topic}=PackageTracker/UpdateLocation,"
                                    f"{post_topic}=UserFeed/ProcessPost"),
        "STREAMAPP_MODERATION_POLL_INTERVAL": "0.1",
    })
    assert worker.proc is not None
    pid = worker.proc.pid
    assert worker.request("POST", "/PackageTracker/pkg1/RegisterPackage", {"finalDestination": "Amsterdam"})[0] == 200

    cases = {
        nap_topic: hostile(b"napper", b'{"tag": "ok", "seconds": 0}', [
            (b"[]", "expected an object"), (b'{"tag": 7}', "input.tag: expected a string"),
            (b'"just a string"', "expected an object"), (b"null", "expected an object"),
            (b'{"seconds": 1}', "missing field 'tag'"), (b'{"tag": "t", "seconds": "soon"}', "expected a number"),
            (b'{"tag": "t", "seconds": 1e400}', "out of range"),
            (b'{"tag": "t", "seconds": 1' + b"0" * 400 + b"}", "out of range"),
        ], rng),
        loc_topic: [
            *hostile(b"pkg1", b'{"timestamp": "2024-10-10 13:00", "location": "Paris"}', [
                (b'{"timestamp": "t"}', "missing field 'location'"), (b"[1, 2]", "expected an object"),
                (b'{"timestamp": ["t"], "location": "x"}', "input.timestamp: expected a string"),
            ], rng),
            Case("unknown package (fails terminally)", b"nope", b'{"timestamp": "t", "location": "x"}',
                 "package not found"),
            Case("valid after the terminal failure", b"pkg1", b'{"timestamp": "last", "location": "Brussels"}',
                 None),
        ],
        post_topic: hostile(b"user1", b'{"content": "hello", "metadata": "public"}', [
            (b'{"content": "no metadata"}', "missing field 'metadata'"), (b"true", "expected an object"),
            (b'{"content": {}, "metadata": "m"}', "input.content: expected a string"),
        ], rng),
    }
    for topic, topic_cases in cases.items():
        produce_cases(topic, topic_cases)
    everything = [(topic, c) for topic, cs in cases.items() for c in cs]
    bad = [(topic, c) for topic, c in everything if c.reason is not None]
    valid = [(topic, c) for topic, c in everything if c.reason is None]

    def inv_id(topic: str, case: Case) -> str:
        return ids.for_record(worker.app_id, topic, harness.topic_id(topic), 0, case.offset)

    def dead() -> dict[tuple[str, int], harness.Record]:
        return {(r.headers.get("streamapp.source.topic", b"").decode(),
                 int(r.headers.get("streamapp.source.offset", b"-1"))): r
                for r in harness.read_topic(app_env["dead_letters"])}

    def unfinished() -> list[str]:
        return [f"{t}:{c.offset} {c.name}" for t, c in valid
                if worker.invocation(inv_id(t, c))["status"] != "completed"]

    def progress() -> str:
        got = dead()
        missing = [f"{t}@{c.offset} {c.name}" for t, c in bad if (t, c.offset) not in got]
        return f"dead letters missing: {missing}\nvalid not completed: {unfinished()}\n{worker.tail(40)}"

    harness.wait_for(lambda: len(dead()) >= len(bad) and not unfinished(), timeout=120, interval=1.0,
                     what=f"{len(bad)} dead letters and {len(valid)} completions", detail=progress)

    letters = dead()
    extra = sorted(set(letters) - {(t, c.offset) for t, c in bad})
    assert len(letters) == len(bad), f"unexpected dead letters: {extra}"
    targets = {nap_topic: "Test/Nap", loc_topic: "PackageTracker/UpdateLocation", post_topic: "UserFeed/ProcessPost"}
    problems = []
    for topic, case in bad:
        letter = letters[(topic, case.offset)]
        error = letter.headers.get("streamapp.error", b"").decode()
        service, handler = targets[topic].split("/")
        if case.reason not in error:
            problems.append(f"{case.name}: streamapp.error={error!r}, expected {case.reason!r}")
        if letter.headers.get("streamapp.source.partition") != b"0":
            problems.append(f"{case.name}: source partition header {letter.headers.get('streamapp.source.partition')}")
        if (letter.headers.get("streamapp.service"), letter.headers.get("streamapp.handler")) != (
                service.encode(), handler.encode()):
            problems.append(f"{case.name}: service/handler headers {letter.headers}")
        if letter.key != case.key:
            problems.append(f"{case.name}: dead letter key {letter.key!r:.60} != {case.key!r:.60}")
        if case.name == "5 MB value":
            # Too big for the dead-letter topic: the value is left out, its size is said.
            size = str(len(case.value or b"")).encode()
            if letter.value is not None or letter.headers.get("streamapp.value.bytes") != size:
                problems.append(f"{case.name}: value {len(letter.value or b'')} bytes, headers {letter.headers}")
        elif case.reason == "package not found":
            # A handler's failure is dead-lettered by the engine, from the decoded payload.
            if json.loads(letter.value or b"null") != json.loads(case.value or b"null"):
                problems.append(f"{case.name}: dead letter value {letter.value!r:.60} != {case.value!r:.60}")
        elif letter.value != case.value and not (case.value is None and letter.value in (None, b"")):
            problems.append(f"{case.name}: dead letter value {letter.value!r:.60} != {case.value!r:.60}")
        status = worker.invocation(inv_id(topic, case))["status"]
        expected = "failed" if case.reason == "package not found" else None
        if status != expected:
            problems.append(f"{case.name}: invocation status {status}, expected {expected}")
    assert not problems, "\n".join(problems)

    # Valid records completed, in order per key.
    naps = [e for e in ledger(app_env["ledger"]) if e["event"] == "after"]
    assert len(naps) == sum(1 for t, _ in valid if t == nap_topic)
    status, info = worker.request("GET", "/PackageTracker/pkg1/getPackageInfo")
    assert status == 200
    locations = [loc["location"] for loc in info["locations"]]
    assert locations == ["Paris"] * (sum(1 for t, _ in valid if t == loc_topic) - 1) + ["Brussels"]
    assert worker.request("GET", "/Test/napper/Count") == (200, len(naps))

    # The worker never restarted or crashed because of input.
    assert worker.proc.poll() is None and worker.proc.pid == pid
    assert worker.get("/health")["ready"] is True
    log = worker.log()
    for marker in ("Traceback", "crashed", "Crashed", "Restarting dead"):
        assert marker not in log, f"{marker!r} in the worker log:\n{worker.tail(80)}"
    assert log.count("Dead-lettering record") == len(bad) - 1  # the terminal failure is dead-lettered by the engine


def test_hostile_records__produce_limit__a_5mb_record_is_refused_by_a_default_topic(app_env):
    """On a topic with the broker's default max.message.bytes (~1 MB) a 5 MB record never gets in:
    the producer gets MessageSizeTooLarge, so the worker never sees it."""
    from aiokafka.errors import MessageSizeTooLargeError

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=harness.bootstrap(), max_request_size=16 * 1024 * 1024)
        await producer.start()
        try:
            with pytest.raises(MessageSizeTooLargeError):
                await producer.send_and_wait(app_env["source"], key=b"k", value=b"x" * BIG)
        finally:
            await producer.stop()

    harness.run_async(go())
    assert harness.read_topic(app_env["source"]) == []
