"""HTTP calls to any worker while a worker joins and another is SIGKILLed.

Clients keep calling, sending and reading for many keys, each request to a
worker drawn at random (so most reach a worker that does not own the key and
must be forwarded). Every answer must be a success or a retryable JSON
503/504; a client retries those with the same idempotency key, and a
request that was in flight to the killed worker elsewhere. Afterwards every
acknowledged call and send must have run exactly once.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from streamapp.runtime.commands import partition_for
from tests import harness
from tests.support.services import ledger

KEYS = [f"k{n}" for n in range(16)]
CLIENTS = 6
RETRYABLE = (503, 504)
OP_DEADLINE = 120.0  # seconds one logical request may take, retries included


@dataclass
class Load:
    """What the clients did and saw, shared with the test's thread."""

    targets: list[harness.Worker]
    killed: dict[str, float] = field(default_factory=dict)  # worker url -> when its kill began
    stop: threading.Event = field(default_factory=threading.Event)
    acked: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # tag -> (op, key, invocation id)
    served: list[tuple[str, str]] = field(default_factory=list)  # (worker url, key) of each 200 call
    retried: Counter[str] = field(default_factory=Counter)  # why requests were retried
    violations: list[str] = field(default_factory=list)  # each with the wall-clock time it was seen
    finished: dict[str, str] = field(default_factory=dict)  # invocation id -> key, seen completed
    floor: Counter[str] = field(default_factory=Counter)  # key -> highest count a completed call returned

    def violation(self, text: str) -> None:
        self.violations.append(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} {text}")

    def progress(self) -> int:
        return len(self.acked)


async def ask(session: aiohttp.ClientSession, load: Load, method: str, path: str, body: Any = None,
              idem: str | None = None) -> tuple[str, int, Any, dict[str, str]] | None:
    """One request to a random live worker: (its url, status, JSON body, headers), or None to try again."""
    worker = random.choice(load.targets)
    headers = {"content-type": "application/json", **({"idempotency-key": idem} if idem else {})}
    data = json.dumps(body).encode() if body is not None else None
    try:
        async with session.request(method, worker.url + path, data=data, headers=headers) as resp:
            text = await resp.text()
            try:
                answer = json.loads(text) if text else None
            except ValueError:
                answer = text
            return worker.url, resp.status, answer, dict(resp.headers)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        if worker.url in load.killed:  # in flight to, or sent to, the worker being killed
            load.retried["killed worker"] += 1
            return None
        load.violation(f"{method} {path} to {worker.url}: no answer ({exc!r})")
        return None


def retryable(load: Load, what: str, status: int, answer: Any) -> bool:
    if status in RETRYABLE and isinstance(answer, dict) and isinstance(answer.get("error"), str):
        load.retried[f"{status} {answer['error'][:40]}"] += 1
        return True
    load.violation(f"{what}: {status} {str(answer)[:200]}")
    return False


async def write(session: aiohttp.ClientSession, load: Load, op: str, key: str, tag: str) -> None:
    """A call or a send, retried with its idempotency key until acknowledged."""
    path = f"/Test/{key}/Nap" + ("/send" if op == "send" else "")
    deadline = time.monotonic() + OP_DEADLINE
    while time.monotonic() < deadline:
        got = await ask(session, load, "POST", path, {"tag": tag}, idem=tag)
        if got is not None:
            url, status, answer, headers = got
            if op == "call" and status == 200:
                if not (isinstance(answer, dict) and answer.get("tag") == tag):
                    load.violation(f"call {tag}: wrong result {answer}")
                inv = headers.get("x-streamapp-invocation-id", "")
                load.acked[tag] = (op, key, inv)
                load.served.append((url, key))
                load.finished[inv] = key
                load.floor[key] = max(load.floor[key], int(answer.get("count", 0)) if isinstance(answer, dict) else 0)
                return
            if op == "send" and status == 202:
                load.acked[tag] = (op, key, answer["invocationId"])
                return
            if not retryable(load, f"{op} {tag} to {url}", status, answer):
                return
        await asyncio.sleep(0.2)
    load.violation(f"{op} {tag}: not acknowledged within {OP_DEADLINE:.0f}s")


async def read(session: aiohttp.ClientSession, load: Load, rng: random.Random) -> None:
    """A read: the key's state, its shared handler, or a completed invocation (must stay visible).

    A key's state never goes back: a read sees at least the count of every call
    that completed before the read began.
    """
    key = rng.choice(KEYS)
    floor = load.floor[key]
    kind = rng.choice(["state", "count", "lookup"])
    if kind == "lookup" and load.finished:
        inv = rng.choice(list(load.finished))
        path, expect = f"/invocations/{inv}", lambda a: a.get("status") == "completed"
    elif kind == "state":
        path, expect = f"/state/Test/{key}", lambda a: a.get("key") == key and a["state"].get("count", 0) >= floor
    else:
        path, expect = f"/Test/{key}/Count", lambda a: isinstance(a, int) and a >= floor
    got = await ask(session, load, "GET", path)
    if got is None:
        return
    url, status, answer, _ = got
    if status == 200:
        if not expect(answer):
            load.violation(f"GET {path} from {url}: {answer} (a completed call had made the count {floor})")
    else:
        retryable(load, f"GET {path} from {url}", status, answer)


async def client(load: Load, n: int) -> None:
    rng = random.Random(n)
    timeout = aiohttp.ClientTimeout(total=90)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        count = 0
        while not load.stop.is_set():
            count += 1
            if rng.random() < 0.6:
                op = "call" if rng.random() < 0.6 else "send"
                await write(session, load, op, rng.choice(KEYS), f"c{n}-{count}")
            else:
                await read(session, load, rng)


def run_clients(load: Load) -> threading.Thread:
    async def all_clients() -> None:
        await asyncio.gather(*(client(load, n) for n in range(CLIENTS)))

    thread = threading.Thread(target=lambda: asyncio.run(all_clients()), name="http-clients", daemon=True)
    thread.start()
    return thread


def test_http__calls_to_any_worker_while_one_joins_and_one_is_killed__answered_or_retryable_and_run_once(
    workers, app_env
):
    env = {"STREAMAPP_SESSION_TIMEOUT": "6"}
    a = workers.new("a", env=env)
    b = workers.new("b", env=env)

    def shared(*ws: harness.Worker) -> bool:
        healths = [w.get("/health") for w in ws]
        return all(h["ready"] for h in healths) and sorted(p for h in healths for p in h["live_partitions"]) \
            == [0, 1, 2, 3]

    harness.wait_for(lambda: shared(a, b), timeout=60, what="a and b to share the 4 partitions")
    owner_at_start = {p: w.url for w in (a, b) for p in w.get("/health")["live_partitions"]}
    partitions = {key: partition_for(f"Test/{key}", 4) for key in KEYS}
    assert set(partitions.values()) == {0, 1, 2, 3}
    load = Load(targets=[a, b])
    thread = run_clients(load)
    try:
        def progressed(by: int) -> Any:
            mark = load.progress() + by
            return harness.wait_for(lambda: load.progress() >= mark or load.violations, timeout=90,
                                    what=f"{by} more acknowledged calls", detail=lambda: str(load.retried))

        progressed(20)
        c = workers.new("c", env=env)  # joins: a rebalance moves partitions while calls wait on them
        load.targets = [a, b, c]
        progressed(20)
        load.targets = [a, c]
        load.killed[b.url] = time.time()
        b_pid = b.proc.pid if b.proc else -1
        b.kill()  # its partitions stay with it until its session expires, then move
        harness.wait_for(lambda: shared(a, c), timeout=90, what="a and c to take over b's partitions",
                         detail=lambda: a.tail() + "\n---\n" + c.tail())
        progressed(20)
    finally:
        load.stop.set()
        thread.join(OP_DEADLINE + 30)
    assert not thread.is_alive(), "a client did not finish"
    assert load.violations == [], "\n".join(load.violations[:30])

    # The sends ran too (not only acknowledged): wait for each to complete.
    for tag, (op, _key, inv) in load.acked.items():
        if op == "send":
            harness.wait_for(lambda i=inv: a.invocation(i)["status"] == "completed", timeout=60,
                             what=f"send {tag} ({inv}) to complete", detail=a.tail)
    after = [e for e in ledger(app_env["ledger"]) if e["event"] == "after"]
    invs_of: dict[str, set[str]] = defaultdict(set)
    for e in after:
        invs_of[str(e["tag"])].add(str(e["inv"]))
    for tag, (op, key, inv) in load.acked.items():
        # One invocation per idempotency key, however often the request was retried.
        assert invs_of.get(tag) == {inv}, f"{op} {tag} on {key}: invocations {invs_of.get(tag)}, acknowledged {inv}"
    runs = Counter(str(e["tag"]) for e in after)
    for tag, n in runs.items():
        if n > 1:  # a step may run again only if the killed worker ran it before it died
            assert n == 2 and any(e["tag"] == tag and e["pid"] == b_pid for e in after), (tag, n)
    assert set(runs) == set(load.acked), "a call ran that no client made"
    # Each invocation completed once: the per-key counter saw every acknowledged request exactly once.
    per_key = Counter(key for _, key, _ in load.acked.values())
    for key in KEYS:
        assert a.get(f"/state/Test/{key}")["state"].get("count", 0) == per_key[key], key
    # Forwarding was exercised: calls answered by a worker that did not own the key at the start.
    forwarded = {partitions[key] for url, key in load.served if url != owner_at_start[partitions[key]]}
    assert forwarded == {0, 1, 2, 3}, forwarded
    print(f"acked={len(load.acked)} retried={dict(load.retried)}")
