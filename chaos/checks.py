"""The invariants a chaos run must keep, checked from collected evidence only.

Evidence (gathered by the driver once the system is quiet):

    source        the source topic: every event as the broker holds it (offset, user, content)
    posts, feeds  the backend's records, one per idempotency key, with a global sequence
                  (``createdAt`` / ``seq``) that orders every recorded side effect
    dead_letters  the dead-letter topic
    bad           the malformed records the driver interleaved (``--bad-records``), read back
                  from the source topic with the reason each dead letter must give
    status        the engine's view (GET /invocations/{id}) of events that did not complete
    calls         the recording proxy: each backend call, the worker incarnation that made it,
                  when it arrived and when it was answered
    activations   from the worker logs: when each incarnation took over (activated) a partition
    events        what the driver did (faults, undos) and the crashes it saw, with wall-clock times
    entries,      the internal topic's journal ``entry`` and ``activate`` commands (log order):
    epochs        which step executions the engine journaled under which activation

Crashes, journaled re-runs and re-runs of steps: ``chaos.steps``. Malformed
records: ``_bad_records`` (one dead letter each, with its reason; a repeat only
after a fault that fell before the record's offset was committed).

What each check can and cannot see:

* lost / stuck / dead-lettered: an event completed when exactly one post has its
  content and that post has a feed update. An event that did not is stuck if the
  engine still holds it unfinished, dead-lettered if it failed, lost otherwise
  (the engine forgot it, or says it completed although the backend never saw
  the side effect).
* duplicated: a second post for one event, or a second feed update for one post,
  i.e. two *different* idempotency keys. The backend deduplicates a repeated key,
  so a step re-executed with the same key (after a crash, or by a worker that
  kept running after losing its partition) is only a duplicate *attempt*:
  counted (``dup_attempts``) and reported, not a failure.
* order: per user, feed updates must follow source order (backend ``seq``); and
  when they do, an event's post must be created after the previous event's feed
  update (one invocation per key at a time, "serial").
* overlaps: the backend alone cannot say which worker ran a step, and a
  re-executed step with the same key looks just like a concurrent one (two
  different keys for one step, counted as duplicated, is the only trace it
  leaves). The proxy and the logs can say more. An execution is the calls one
  incarnation made for one invocation under one activation of its partition; if
  two executions' spans [first call, last answer] intersect, the invocation ran
  on two workers at overlapping times (``overlaps``). A call made after another
  incarnation activated the partition is a step under a superseded epoch
  (``stale_calls``; a violation too: fencing failed, even when the other worker
  was already gone). Blind spots: steps without a backend call (sleeps, journal
  writes) are invisible; an execution's span starts at its first call, not when
  the worker began the invocation, and ends at its last answer, not at its last
  journal write; activation times come from log lines (millisecond precision).
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from chaos import steps
from chaos.diagnosis import Admission, clock, late_admissions  # noqa: F401 (re-exported)
from chaos.faults import FAULTS
from chaos.proxy import Call
from chaos.steps import Disturbance, Entry, EpochStart

IN_FLIGHT = ("pending", "running", "sleeping", "retrying", "paused", "scheduled")
NO_ANSWER = "no worker answered"  # a status: the engine could not be asked (counted as stuck)


@dataclass(frozen=True)
class SourceEvent:
    offset: int
    user: str
    content: str
    inv: str  # the invocation id the engine derives from the source coordinates


@dataclass(frozen=True)
class BadSource:
    """A malformed record in the source topic, and what its dead letter's error must say."""

    offset: int
    kind: str
    reason: str


@dataclass(frozen=True)
class DeadLetter:
    key: str | None
    error: str
    invocation: str | None
    offset: int | None
    time: float = 0.0  # when it was produced (record timestamp)


@dataclass(frozen=True)
class Activation:
    time: float
    incarnation: str
    partition: int


@dataclass
class Evidence:
    source: list[SourceEvent]
    posts: list[dict[str, Any]]
    feeds: list[dict[str, Any]]
    dup_posts: int
    dup_feeds: int
    dead_letters: list[DeadLetter]
    status: dict[str, str | None]  # inv -> engine status (None: unknown to the engine)
    calls: list[Call]
    activations: list[Activation]
    partition_of: Callable[[str], int]  # user -> partition of the internal topic
    events: list[Disturbance] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    epochs: list[EpochStart] = field(default_factory=list)
    session_timeout: float = 10.0
    bad: list[BadSource] = field(default_factory=list)  # malformed source records (not events)

    def to_json(self) -> dict[str, Any]:
        """Everything but ``partition_of``, for ``python -m chaos --recheck``."""
        return {
            "source": [asdict(e) for e in self.source], "posts": self.posts, "feeds": self.feeds,
            "dup_posts": self.dup_posts, "dup_feeds": self.dup_feeds,
            "dead_letters": [asdict(d) for d in self.dead_letters], "status": self.status,
            "calls": [asdict(c) for c in self.calls], "activations": [asdict(a) for a in self.activations],
            "events": [asdict(d) for d in self.events], "entries": [asdict(e) for e in self.entries],
            "epochs": [asdict(e) for e in self.epochs], "session_timeout": self.session_timeout,
            "bad": [asdict(b) for b in self.bad],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], partition_of: Callable[[str], int]) -> Evidence:
        return cls(
            source=[SourceEvent(**e) for e in data["source"]], posts=data["posts"], feeds=data["feeds"],
            dup_posts=data["dup_posts"], dup_feeds=data["dup_feeds"],
            dead_letters=[DeadLetter(**d) for d in data["dead_letters"]], status=data["status"],
            calls=[Call(**c) for c in data["calls"]], activations=[Activation(**a) for a in data["activations"]],
            partition_of=partition_of, events=[Disturbance(**d) for d in data.get("events", [])],
            entries=[Entry(**e) for e in data.get("entries", [])],
            epochs=[EpochStart(**e) for e in data.get("epochs", [])],
            session_timeout=data.get("session_timeout", 10.0),
            bad=[BadSource(**b) for b in data.get("bad", [])],
        )


@dataclass
class Violation:
    kind: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.subject}: {self.detail}"


@dataclass
class Report:
    faults: int
    events: int
    lost: int = 0
    duplicated: int = 0
    order_violations: int = 0
    serial_violations: int = 0
    stuck: int = 0
    dead_lettered: int = 0
    overlaps: int = 0
    stale_calls: int = 0
    dup_post_attempts: int = 0
    dup_feed_attempts: int = 0
    source_duplicates: int = 0
    faults_effective: int = 0  # faults that changed something (a kill of a stopped worker does not)
    crashes: int = 0
    journaled_reruns: int = 0
    reruns: int = 0  # steps run again before their entry was durable (allowed; unexplained ones are violations)
    bad_records: int = 0  # malformed records in the source topic
    bad_missing: int = 0  # ... with no dead letter
    bad_duplicated: int = 0  # dead letters beyond the first of a malformed record, unexplained by a fault
    bad_redelivered: int = 0  # ... explained: a fault just after the first, before the source offset was committed
    bad_wrong_reason: int = 0  # ... whose dead letter does not give the reason
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    subjects: set[str] = field(default_factory=set)  # invocation ids involved in violations

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        return (
            f"faults={self.faults} events={self.events} lost={self.lost} duplicated={self.duplicated} "
            f"order_violations={self.order_violations} stuck={self.stuck} dead_lettered={self.dead_lettered} "
            f"serial_violations={self.serial_violations} overlaps={self.overlaps} stale_calls={self.stale_calls} "
            f"crashes={self.crashes} journaled_reruns={self.journaled_reruns} reruns={self.reruns} "
            f"faults_effective={self.faults_effective} bad_records={self.bad_records} "
            f"bad_missing={self.bad_missing} bad_duplicated={self.bad_duplicated} "
            f"bad_redelivered={self.bad_redelivered} bad_wrong_reason={self.bad_wrong_reason} "
            f"dup_attempts={self.dup_post_attempts + self.dup_feed_attempts} "
            f"(posts={self.dup_post_attempts} feeds={self.dup_feed_attempts})"
        )

    def add(self, kind: str, subject: str, detail: str, inv: str | None = None) -> None:
        self.violations.append(Violation(kind, subject, detail))
        if inv:
            self.subjects.add(inv)


def inv_of_key(key: str | None) -> str | None:
    """The invocation id in a step's idempotency key (``inv_…:index``)."""
    return key.rsplit(":", 1)[0] if key and ":" in key else None


def describe_calls(calls: Iterable[Call]) -> str:
    return "; ".join(
        f"{clock(c.start)}-{clock(c.end)} {c.incarnation} {c.kind}"
        + (f" key={c.key}" if c.key else "") + f" -> {c.status}"
        for c in sorted(calls, key=lambda c: c.start)
    )


def check(ev: Evidence, faults: int) -> Report:
    r = Report(faults=faults, events=len(ev.source), dup_post_attempts=ev.dup_posts, dup_feed_attempts=ev.dup_feeds)
    r.faults_effective = sum(1 for d in ev.events if d.effective and d.kind in FAULTS)
    done = _completion(ev, r)
    _order(ev, r, done)
    _overlaps(ev, r)
    _steps(ev, r)
    _bad_records(ev, r)
    return r


# -- every event completed exactly once ------------------------------------------
def _completion(ev: Evidence, r: Report) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Match posts and feed updates to events; returns inv -> (post, feed) of completed events."""
    contents = Counter(e.content for e in ev.source)
    r.source_duplicates = sum(n - 1 for n in contents.values())
    if r.source_duplicates:
        r.notes.append(f"{r.source_duplicates} event(s) are in the source topic twice (a producer retry); "
                       "each copy is its own invocation and must complete")
    posts_by_content: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for post in ev.posts:
        posts_by_content[post["content"]].append(post)
    feeds_by_post: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for feed in ev.feeds:
        feeds_by_post[feed["postId"]].append(feed)

    events_by_content: dict[str, list[SourceEvent]] = defaultdict(list)
    for event in ev.source:
        events_by_content[event.content].append(event)

    done: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    incomplete: list[SourceEvent] = []
    for content, events in events_by_content.items():
        by_inv: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
        for post in posts_by_content.pop(content, []):
            by_inv[inv_of_key(post["idempotencyKey"])].append(post)
        for event in events:
            mine = sorted(by_inv.pop(event.inv, []), key=lambda p: p["createdAt"])
            if not mine:
                incomplete.append(event)
                continue
            if len(mine) > 1:
                r.duplicated += len(mine) - 1
                r.add("duplicated", event.content, f"{len(mine)} posts (keys "
                      f"{', '.join(p['idempotencyKey'] for p in mine)}) for one event", event.inv)
            post = mine[0]
            if post["userId"] != event.user:
                r.add("duplicated", event.content, f"post {post['postId']} is for user {post['userId']}", event.inv)
            feeds = sorted(feeds_by_post.pop(post["postId"], []), key=lambda f: f["seq"])
            if len(feeds) > 1:
                r.duplicated += len(feeds) - 1
                r.add("duplicated", event.content, f"{len(feeds)} feed updates for post {post['postId']} (keys "
                      f"{', '.join(f['idempotencyKey'] for f in feeds)}): two executions diverged", event.inv)
            if not feeds:
                incomplete.append(event)
                continue
            done[event.inv] = (post, feeds[0])
        for inv, posts in by_inv.items():  # posts with this content made by another invocation
            r.duplicated += len(posts)
            r.add("duplicated", content, f"post(s) {[p['postId'] for p in posts]} created by invocation {inv}, "
                  "which no source record of this content maps to", inv)
    for content, posts in posts_by_content.items():
        r.duplicated += len(posts)
        r.add("duplicated", content, f"post(s) {[p['postId'] for p in posts]} for content not in the source topic")
    for post_id, feeds in feeds_by_post.items():
        if post_id not in {p["postId"] for p in ev.posts}:
            r.add("duplicated", post_id, f"feed update(s) {feeds} for a post the backend does not know")

    bad_offsets = {b.offset for b in ev.bad}
    unexpected = [dl for dl in ev.dead_letters if dl.offset not in bad_offsets]
    r.dead_lettered = len(unexpected)
    for dl in unexpected:
        r.add("dead_lettered", dl.key or "(no key)", f"invocation={dl.invocation} source offset={dl.offset} "
              f"error={dl.error}", dl.invocation)
    dead_invs = {dl.invocation for dl in ev.dead_letters}
    for event in incomplete:
        status = ev.status.get(event.inv)
        has_post = any(inv_of_key(p["idempotencyKey"]) == event.inv for p in ev.posts)
        what = "post created, no feed update" if has_post else "no post"
        if event.inv in dead_invs or status == "failed":
            if event.inv not in dead_invs:
                r.add("dead_lettered", event.content, f"{what}; the engine failed {event.inv}, "
                      "and it is not in the dead-letter topic", event.inv)
            continue
        if status in IN_FLIGHT or status == NO_ANSWER:
            r.stuck += 1
            r.add("stuck", event.content, f"{what}; {event.inv} is still {status} (source offset "
                  f"{event.offset})", event.inv)
        else:
            r.lost += 1
            why = ("the engine says it completed" if status == "completed"
                   else "the engine does not know the invocation" if status is None else f"engine status {status}")
            r.add("lost", event.content, f"{what}; {why} ({event.inv}, source offset {event.offset})", event.inv)
    return done


# -- per-user order --------------------------------------------------------------
def _order(ev: Evidence, r: Report, done: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> None:
    by_user: dict[str, list[SourceEvent]] = defaultdict(list)
    for event in sorted(ev.source, key=lambda e: e.offset):
        if event.inv in done:
            by_user[event.user].append(event)
    for user, events in by_user.items():
        for before, after in itertools.pairwise(events):
            _, feed_a = done[before.inv]
            post_b, feed_b = done[after.inv]
            if feed_b["seq"] < feed_a["seq"]:
                r.order_violations += 1
                r.add("order", user, f"feed update for '{after.content}' (source offset {after.offset}, seq "
                      f"{feed_b['seq']}) came before the one for '{before.content}' (source offset {before.offset}, "
                      f"seq {feed_a['seq']})", after.inv)
                r.subjects.add(before.inv)
            elif post_b["createdAt"] < feed_a["seq"]:
                r.serial_violations += 1
                r.add("serial", user, f"post for '{after.content}' created (seq {post_b['createdAt']}) before "
                      f"'{before.content}' updated the feed (seq {feed_a['seq']}): two invocations of one key "
                      "ran at once", after.inv)
                r.subjects.add(before.inv)


# -- no step on two workers at once ----------------------------------------------
def _overlaps(ev: Evidence, r: Report) -> None:
    """Calls under a superseded activation (stale), and executions of one invocation that interleave.

    Each backend call belongs to the activation (epoch) its incarnation made of the
    invocation's partition last before the call. A call is *stale* when another
    incarnation activated the partition after that. The calls of one invocation
    under one (incarnation, activation) form an execution with a span [first call,
    last answer]; two executions whose spans intersect ran the invocation on two
    workers at overlapping times. A clean handover (the old owner stopped or died,
    then the new one activated and resumed) never produces intersecting spans.
    """
    ownership = _Ownership(ev)
    owners, latest, user_of = ownership.owners, ownership.latest, ownership.user_of
    for inv, calls in ownership.calls_by_inv.items():
        user = user_of.get(inv)
        if user is None:
            continue
        partition = ev.partition_of(user)
        stale: list[tuple[Call, Activation | None]] = []
        executions: dict[tuple[str, float | None], list[Call]] = defaultdict(list)
        for call in sorted(calls, key=lambda c: c.start):
            own = latest(partition, call.start, call.incarnation)
            executions[(call.incarnation, own.time if own else None)].append(call)
            current = latest(partition, call.start)
            if current is None or current.incarnation != call.incarnation:
                stale.append((call, current))
        spans = [(key, min(c.start for c in cs), max(c.end for c in cs)) for key, cs in executions.items()]
        interleaved = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:]
                       if a[0][0] != b[0][0] and a[1] <= b[2] and b[1] <= a[2]]
        r.stale_calls += len(stale)
        acts = ", ".join(f"{a.incarnation}@{clock(a.time)}" for a in owners.get(partition, []))
        where = f"{inv} (user {user}, partition {partition})"
        context = f"All calls: {describe_calls(calls)}. Activations of partition {partition}: {acts}"
        if interleaved:
            r.overlaps += 1
            parts = [f"{a[0][0]} ran it from {clock(a[1])} to {clock(a[2])} and {b[0][0]} from {clock(b[1])} "
                     f"to {clock(b[2])}" for a, b in interleaved]
            r.add("overlap", where, "; ".join(parts) + f". {context}", inv)
        elif stale:
            parts = [f"{call.incarnation} made {call.kind}" + (f" key={call.key}" if call.key else "")
                     + f" at {clock(call.start)} although "
                     + (f"{owner.incarnation} had activated the partition at {clock(owner.time)}" if owner
                        else "it had never activated the partition")
                     for call, owner in stale]
            r.add("stale", where, "; ".join(parts) + f" (a step under a superseded epoch). {context}", inv)


class _Ownership:
    """Calls by invocation, and which activation of the invocation's partition each call ran under."""

    def __init__(self, ev: Evidence) -> None:
        self.ev = ev
        post_inv = {p["postId"]: inv_of_key(p["idempotencyKey"]) for p in ev.posts}
        self.user_of = {e.inv: e.user for e in ev.source}
        for p in ev.posts:
            self.user_of.setdefault(inv_of_key(p["idempotencyKey"]) or "", p["userId"])
        self.owners: dict[int, list[Activation]] = defaultdict(list)
        for act in sorted(ev.activations, key=lambda a: a.time):
            self.owners[act.partition].append(act)
        self.calls_by_inv: dict[str, list[Call]] = defaultdict(list)
        self.inv_of: dict[int, str] = {}
        for call in ev.calls:
            inv = inv_of_key(call.key) if call.key else post_inv.get(call.post_id or "")
            if inv is not None:
                self.calls_by_inv[inv].append(call)
                self.inv_of[id(call)] = inv

    def latest(self, partition: int, t: float, incarnation: str | None = None) -> Activation | None:
        found = None
        for act in self.owners.get(partition, []):
            if act.time > t:
                break
            if incarnation is None or act.incarnation == incarnation:
                found = act
        return found

    def execution_of(self, call: Call) -> tuple[str, float | None]:
        """(incarnation, time of its last activation of the partition before the call)."""
        user = self.user_of.get(self.inv_of.get(id(call), ""))
        own = self.latest(self.ev.partition_of(user), call.start, call.incarnation) if user else None
        return call.incarnation, own.time if own else None


# -- crashes, re-run steps (chaos.steps) -----------------------------------------
def _steps(ev: Evidence, r: Report) -> None:
    for d in ev.events:
        if d.kind == "crash":
            r.crashes += 1
            r.add("crash", d.target or "(worker)", f"exited on its own at {clock(d.time)}: {d.detail}")
    journaled = set()
    for first, later in steps.journaled_reruns(ev.entries, ev.epochs):
        r.journaled_reruns += 1
        journaled.add(f"{first.inv}:{first.index}")
        r.add("journaled_rerun", first.inv, f"step {first.index} was journaled under epoch {first.epoch} (partition "
              f"{first.partition}, offset {first.offset}) and run again under epoch {later.epoch}, activated after "
              f"that entry (its entry at offset {later.offset})", first.inv)
    ownership = _Ownership(ev)
    for rr in steps.call_reruns(ev.calls, ownership.execution_of, ev.events, ev.session_timeout):
        if rr.key in journaled:
            continue
        r.reruns += 1
        if rr.explained_by is None and not rr.same_execution:
            r.add("rerun", rr.key, f"{rr.again.incarnation} called it again at {clock(rr.again.start)} after "
                  f"{rr.first.incarnation} at {clock(rr.first.start)}, with no fault or crash from "
                  f"{steps.RERUN_WINDOW + ev.session_timeout:g}s before the first call to the repeat",
                  inv_of_key(rr.key))


# -- each malformed record dead-lettered once, with its reason -------------------
COMMIT_WINDOW = 8.0  # seconds after a dead letter within which its source offset is committed (Faust: 2.8 s)


def _bad_records(ev: Evidence, r: Report) -> None:
    """Each malformed record: one dead letter, with its reason.

    The sources agent dead-letters a record, and Faust commits its offset at
    the next commit (every ``broker_commit_interval``, 2.8 s); a rebalance
    drops uncommitted acks without committing them. A worker killed or paused
    past its session, a rebalance, or the broker going away in between lets
    the partition's next owner read the record again and dead-letter it again
    (dead letters of source records are at least once). Such a repeat is
    counted (``bad_redelivered``), not failed, when an effective fault or crash
    falls within ``COMMIT_WINDOW`` after the first letter; when it comes later
    (a broker outage can hold the re-read back for long) is not bounded. Any
    other repeat is a violation (``bad_duplicated``): the record was handled
    twice with nothing to excuse it (a skipped commit, a replay not skipped).
    """
    letters: dict[int | None, list[DeadLetter]] = defaultdict(list)
    for dl in ev.dead_letters:
        letters[dl.offset].append(dl)
    disturbances = sorted((d for d in ev.events if d.effective and (d.kind in FAULTS or d.kind == "crash")),
                          key=lambda d: d.time)
    r.bad_records = len(ev.bad)
    for bad in ev.bad:
        mine = sorted(letters.get(bad.offset, []), key=lambda dl: dl.time)
        subject = f"{bad.kind} record at source offset {bad.offset}"
        if not mine:
            r.bad_missing += 1
            r.add("bad_missing", subject, "no dead letter")
            continue
        first = mine[0]
        for again in mine[1:]:
            cause = next((d for d in disturbances if first.time - 1.0 <= d.time <= first.time + COMMIT_WINDOW),
                         None)
            if cause is not None:
                r.bad_redelivered += 1
                r.notes.append(f"{subject} dead-lettered again at {clock(again.time)} after {cause.kind} "
                               f"{cause.target or ''} at {clock(cause.time)} (first at {clock(first.time)})")
            else:
                r.bad_duplicated += 1
                r.add("bad_duplicated", subject, f"dead-lettered at {clock(first.time)} and again at "
                      f"{clock(again.time)}, with no fault or crash within {COMMIT_WINDOW:g}s after the first "
                      "(its source offset stayed uncommitted)")
        wrong = [dl.error for dl in mine if bad.reason not in dl.error]
        if wrong:
            r.bad_wrong_reason += 1
            r.add("bad_wrong_reason", subject, f"dead letter says {wrong[0]!r}, expected {bad.reason!r}")
