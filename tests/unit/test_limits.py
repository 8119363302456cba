"""Records over the broker's limit end the invocation, failed, and never strand its key (issue 10, A/1/2).

Engine tests run the state machine on fake tables; actor tests run real
handlers in an ``ActorPool`` whose sends go to a fake log that refuses
records over a limit the way the broker does.
"""

from __future__ import annotations

from typing import Any

from aiokafka.errors import MessageSizeTooLargeError

from streamapp.config import Settings
from streamapp.durable import ObjectContext, Service
from streamapp.durable.service import Registry
from streamapp.runtime import commands
from streamapp.runtime.actors import ActorPool
from streamapp.runtime.app import Runtime
from streamapp.runtime.limits import EXIT_CHANGELOG_REFUSED, ChangelogGuard, Limits, row_size
from tests.unit.engine_fakes import EngineRig

ROW_LIMIT = 20_000
TOPICS = {"command": "app-invocations", "invocations": "app-invocations-changelog",
          "results": "app-results-changelog", "state": "app-state-changelog"}
LIMITS = Limits(command=ROW_LIMIT, rows=dict.fromkeys(("invocations", "results", "state"), ROW_LIMIT), topics=TOPICS)


def invoke(inv_id: str, key: str = "a", payload: Any = None) -> dict[str, Any]:
    return {"op": "invoke", "id": inv_id, "service": "Svc", "handler": "h", "key": key, "payload": payload,
            "not_before": None, "source": None}


class Rig(EngineRig):
    """An engine with the limits above; records the dead letters it asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.engine.limits = LIMITS
        self.dead: list[tuple[str, str]] = []
        self.engine.on_dead_letter = lambda rec, error: self.dead.append((rec["id"], error))
        self.p = commands.partition_for("Svc/a", 4)
        self.epoch = self.activate(self.p)

    def started(self) -> list[str]:
        return [s[2] for s in self.actors.started]

    def cmd(self, op: str, inv_id: str, **fields: Any) -> None:
        self.apply(self.p, {"op": op, "id": inv_id, "epoch": self.epoch, "attempt": 1, **fields})

    def error(self, inv_id: str) -> str:
        return str(self.tables.results.get(inv_id)["error"])


def test_complete__state_over_the_limit_fails_the_invocation_and_the_key_moves_on() -> None:
    rig = Rig()
    for inv_id in ("i1", "i2", "i3"):
        rig.apply(rig.p, invoke(inv_id))
    rig.cmd("complete", "i1", result=1, state={"log": "x" * 9_000})
    assert rig.status("i1") == "completed"
    rig.cmd("complete", "i2", result=2, state={"log": "x" * (ROW_LIMIT + 1)})
    assert rig.status("i2") == "failed"
    error = rig.error("i2")
    assert "state of Svc/a would be" in error and f"{ROW_LIMIT}-byte record limit" in error, error
    assert "app-state-changelog" in error
    assert rig.tables.state.get("Svc/a") == {"log": "x" * 9_000}  # as the last invocation that fit left it
    assert rig.dead == [("i2", error)]
    assert rig.started() == ["i1", "i2", "i3"]


def test_complete__result_over_the_limit_fails_without_touching_state() -> None:
    rig = Rig()
    rig.apply(rig.p, invoke("i1"))
    rig.apply(rig.p, invoke("i2"))
    rig.cmd("complete", "i1", result="r" * ROW_LIMIT, state={"n": 1})
    assert rig.status("i1") == "failed"
    assert "outcome (payload, whole journal and result)" in rig.error("i1")
    assert rig.tables.state.get("Svc/a") is None
    assert rig.started() == ["i1", "i2"]


def test_entry__journal_over_the_limit_fails_the_invocation_and_stops_its_actor() -> None:
    rig = Rig()
    rig.apply(rig.p, invoke("i1"))
    rig.apply(rig.p, invoke("i2"))
    step = {"t": "run", "name": "fetch", "value": "v" * 8_000}
    rig.cmd("entry", "i1", index=0, entry=step)
    rig.cmd("entry", "i1", index=1, entry=step)
    assert rig.status("i1") == "pending" and len(rig.tables.invocations.get("i1")["journal"]) == 2
    rig.cmd("entry", "i1", index=2, entry=step)
    assert rig.status("i1") == "failed"
    assert "the invocation's record (payload and whole journal) would be" in rig.error("i1")
    assert "i1" in rig.actors.cancelled  # no further step of it runs
    assert rig.started() == ["i1", "i2"]
    assert [d[0] for d in rig.dead] == ["i1"]
    # A late outcome of the stopped actor changes nothing.
    rig.cmd("complete", "i1", result=1, state={"n": 1})
    assert rig.status("i1") == "failed" and rig.tables.state.get("Svc/a") is None


def test_invoke__payload_over_the_row_limit_fails_at_once_and_later_calls_run() -> None:
    rig = Rig()
    rig.apply(rig.p, invoke("big", payload={"blob": "b" * ROW_LIMIT}))
    assert rig.status("big") == "failed"
    assert rig.tables.invocations.get("big") is None
    assert rig.dead == [("big", rig.error("big"))]
    rig.apply(rig.p, invoke("big", payload=None))  # a redelivery stays deduplicated
    rig.apply(rig.p, invoke("small"))
    assert rig.started() == ["small"]


def test_fail__outcome_too_large_for_the_changelog_is_kept_without_its_journal() -> None:
    rig = Rig()
    rig.apply(rig.p, invoke("i1"))
    rig.cmd("entry", "i1", index=0, entry={"t": "run", "name": "s", "value": "v" * (ROW_LIMIT - 1_500)})
    assert rig.status("i1") == "pending"
    rig.cmd("fail", "i1", error="E" * 4_000)
    row = rig.tables.results.get("i1")
    assert row["status"] == "failed" and row["error"] == "E" * 4_000
    assert row["journal"] == [] and row["dropped"] == ["journal"]
    assert LIMITS.fits("results", "i1", row)


# -- actors ----------------------------------------------------------------
svc = Service("Big")
side_effects: list[str] = []


@svc.handler()
async def Grow(ctx: ObjectContext, size: int) -> int:
    ctx.set("blob", "s" * size)
    return size


@svc.handler()
async def Fetch(ctx: ObjectContext, size: int) -> int:
    def fetch() -> str:
        side_effects.append(ctx.invocation_id)
        return "f" * size

    body = await ctx.run("fetch", fetch)
    return len(body)


class FakeLog:
    """The internal topic: refuses a command over ``limit`` bytes, as the broker does."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.commands: list[dict[str, Any]] = []
        self.dead: list[tuple[str, str]] = []

    async def send(self, p: int, okey: str, cmd: dict[str, Any]) -> None:
        if len(commands.encode(cmd)) > self.limit:
            raise MessageSizeTooLargeError()
        self.commands.append(cmd)

    async def invoke(self, target: dict[str, Any], parent: str | None = None) -> None:
        raise AssertionError("not used")

    async def dead_letter(self, rec: dict[str, Any], error: str) -> None:
        self.dead.append((rec["id"], error))

    def ops(self) -> list[str]:
        return [c["op"] for c in self.commands]


async def run_attempt(pool: ActorPool, handler: str, payload: Any, journal: list[Any] | None = None,
                      attempt: int = 0) -> None:
    rec = {"id": "inv1", "service": "Big", "handler": handler, "key": "k", "payload": payload,
           "attempt": attempt, "journal": journal or []}
    pool.start(0, "e1", rec, {})
    await pool.tasks["inv1"]


def pool_for(log: FakeLog, limits: Limits | None) -> ActorPool:
    pool = ActorPool(Registry([svc]), log.send, log.invoke, log.dead_letter, max_running=10)
    if limits is not None:
        pool.limits = limits
    return pool


async def test_actor__complete_refused_by_the_broker_fails_the_invocation() -> None:
    log = FakeLog(limit=ROW_LIMIT)
    await run_attempt(pool_for(log, None), "Grow", ROW_LIMIT)  # limits unknown: the broker's refusal decides
    assert log.ops() == ["fail"]
    error = log.commands[0]["error"]
    assert error.startswith("TooLargeError: ") and "MessageSizeTooLargeError" in error
    assert log.dead == [("inv1", error)]


async def test_actor__state_over_the_limit_is_refused_before_it_is_sent() -> None:
    log = FakeLog(limit=10 * ROW_LIMIT)  # the command fits; the state row would not
    await run_attempt(pool_for(log, LIMITS), "Grow", ROW_LIMIT)
    assert log.ops() == ["fail"]
    assert "state of Big/k would be" in log.commands[0]["error"]
    assert log.dead == [("inv1", log.commands[0]["error"])]


async def test_run__result_too_large_to_journal_fails_once_and_never_reruns_the_step() -> None:
    side_effects.clear()
    log = FakeLog(limit=ROW_LIMIT)
    pool = pool_for(log, LIMITS)
    await run_attempt(pool, "Fetch", ROW_LIMIT)
    assert side_effects == ["inv1"]
    assert log.ops() == ["entry", "fail"]
    failure = log.commands[0]["entry"]["failure"]
    assert "step 'fetch' could not be journaled" in failure and f"{ROW_LIMIT}-byte record limit" in failure
    assert failure in log.commands[1]["error"]
    # Should the attempt run again (a crash before the fail was applied), the journal answers.
    await run_attempt(pool, "Fetch", ROW_LIMIT, journal=[log.commands[0]["entry"]], attempt=1)
    assert side_effects == ["inv1"]
    assert log.ops() == ["entry", "fail", "fail"]


async def test_run__result_refused_by_the_broker_is_journaled_as_a_failed_step() -> None:
    side_effects.clear()
    log = FakeLog(limit=ROW_LIMIT)
    await run_attempt(pool_for(log, None), "Fetch", ROW_LIMIT)
    assert side_effects == ["inv1"]
    assert log.ops() == ["entry", "fail"]
    assert "MessageSizeTooLargeError" in log.commands[0]["entry"]["failure"]


def test_row_size__is_what_the_table_codec_writes() -> None:
    assert row_size({"a": "é"}) == len('{"a":"é"}'.encode())


# -- changelog writes the broker refuses -------------------------------------
class StubMessage:
    """What Faust's ``Topic._on_published`` touches of a FutureMessage."""

    def __init__(self, topic: Any) -> None:
        self.message = self
        self.channel = topic
        self.exception: BaseException | None = None

    def set_exception(self, exc: BaseException) -> None:
        self.exception = exc


class FailedSend:
    def result(self) -> Any:
        raise MessageSizeTooLargeError()


def publish_refused(topic: Any) -> list[int]:
    """Run Faust's own callback for a refused send to ``topic`` in a Runtime; return the exit codes asked for."""
    exits: list[int] = []
    rt = Runtime(Settings(app_id="limits-test"), Registry())
    guards = [s for s in rt.app.sensors if isinstance(s, ChangelogGuard)]
    assert len(guards) == 1, "no guard: Faust would only log a refused changelog write"
    guard = guards[0]
    guard.exit = exits.append
    topic = topic(rt)
    state = rt.app.sensors.on_send_initiated(None, topic.get_topic_name(), message=None, keysize=0, valsize=0)  # type: ignore[arg-type]
    message = StubMessage(topic)
    topic._on_published(FailedSend(), message=message, producer=None, state=state)
    assert isinstance(message.exception, MessageSizeTooLargeError)
    return exits


def test_changelog_guard__a_refused_changelog_write_stops_the_worker() -> None:
    assert publish_refused(lambda rt: rt.tables.state.changelog_topic) == [EXIT_CHANGELOG_REFUSED]
    assert publish_refused(lambda rt: rt.tables.results.changelog_topic) == [EXIT_CHANGELOG_REFUSED]


def test_changelog_guard__other_topics_are_left_to_their_senders() -> None:
    assert publish_refused(lambda rt: rt.dead_letters) == []


def test_changelog_guard__a_refused_batch_of_staged_rows_stops_the_worker() -> None:
    # Staged table rows go out as record batches (flush.send_rows), not through Faust's
    # send: the app hands a refused batch to the same guard.
    exits: list[int] = []
    rt = Runtime(Settings(app_id="limits-test"), Registry())
    rt.changelog_guard.exit = exits.append
    rt.app.changelog_refused(rt.tables.state.changelog_topic.get_topic_name(), MessageSizeTooLargeError())
    assert exits == [EXIT_CHANGELOG_REFUSED]
