"""Test harness: real broker, worker subprocesses, producers, readers, waits.

Everything here talks to the real Apache Kafka broker named by
``STREAMAPP_TEST_BROKER`` (``make test`` sets it) or the local one.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamapp.config import Settings
from streamapp.runtime import connection

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "tools" / "kafka" / "kafka.sh"
T = TypeVar("T")
READ_TIMEOUT = 30.0  # a read a loaded worker answers in well under a second; only a stuck one takes this long


def broker_url() -> str:
    return os.environ.get("STREAMAPP_TEST_BROKER", "kafka://127.0.0.1:9092")


def bootstrap() -> str:
    return broker_url().split("://", 1)[-1]


def kafka_options() -> dict[str, Any]:
    """Keyword arguments for the rig's own Kafka clients (tests, bench): the test broker, secured as the workers are.

    The ``STREAMAPP_SECURITY_PROTOCOL``, ``STREAMAPP_SASL_*`` and
    ``STREAMAPP_SSL_*`` variables of this process's environment, which the
    workers it starts inherit, apply here too (``runtime/connection.py``).
    """
    security = {k: v for k, v in os.environ.items()
                if k.startswith(("STREAMAPP_SECURITY_", "STREAMAPP_SASL_", "STREAMAPP_SSL_"))}
    return {"bootstrap_servers": bootstrap(), **connection.security_options(Settings.from_env(security))}


def ensure_broker() -> str:
    """Return the broker address, starting the local broker if nothing answers."""
    host, _, port = bootstrap().partition(":")
    try:
        with socket.create_connection((host, int(port or 9092)), timeout=2):
            return broker_url()
    except OSError:
        pass
    if "STREAMAPP_TEST_BROKER" in os.environ:
        raise RuntimeError(f"STREAMAPP_TEST_BROKER={broker_url()} does not answer")
    subprocess.run([str(KAFKA_SH), "up"], check=True)
    return broker_url()


def free_port() -> int:
    """A port from the OS (bind to port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CREATED: set[str] = set()  # names made by ``unique`` in this process: topics, app ids (their topics' prefix)


def unique(prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    CREATED.add(name)
    return name


def delete_created_topics(timeout: float = 60.0) -> int:
    """Delete the topics named by ``unique`` here, and those of the apps it named; how many.

    A test session leaves nothing on the broker: a development broker used by
    many runs otherwise collects thousands of topics, and its metadata
    answers grow until its heap runs out.
    """
    names = tuple(CREATED)
    if not names:
        return 0

    async def go() -> int:
        admin = AIOKafkaAdminClient(**kafka_options())
        await admin.start()
        try:
            topics = [t for t in await admin.list_topics()
                      if t in names or t.startswith(tuple(f"{name}-" for name in names))]
            for i in range(0, len(topics), 100):
                await admin.delete_topics(topics[i:i + 100])
            return len(topics)
        finally:
            await admin.close()

    deleted: int = run_async(asyncio.wait_for(go(), timeout))
    CREATED.clear()
    return deleted


def wait_for(
    check: Callable[[], T], *, timeout: float, what: str, interval: float = 0.2, detail: Callable[[], str] | None = None
) -> T:
    """Poll ``check`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}{extra}")
        time.sleep(interval)


def wait_while_moving(
    read: Callable[[], T], done: Callable[[T], bool], *, still: float, what: str, interval: float = 1.0,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll ``read`` until ``done`` holds for what it returns; fail only once it returned the same for ``still`` s.

    For work whose length depends on the machine's load: a slow run keeps
    changing what ``read`` sees and goes on, a stuck one fails by name.
    """
    last = read()
    moved = time.monotonic()
    while not done(last):
        time.sleep(interval)
        now = read()
        if now != last:
            last, moved = now, time.monotonic()
        elif time.monotonic() - moved > still:
            extra = f"\n{detail()}" if detail else ""
            raise AssertionError(f"{what}: no change for {still:.0f}s from {last!r}{extra}")
    return last


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


# -- topics ---------------------------------------------------------------
def create_topics(names: Iterable[str], partitions: int = 1) -> None:
    async def go() -> None:
        admin = AIOKafkaAdminClient(**kafka_options())
        await admin.start()
        try:
            await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
        finally:
            await admin.close()

    run_async(go())


def recreate_topic(name: str, partitions: int = 1, timeout: float = 60.0,
                   while_deleted: Callable[[], object] | None = None) -> None:
    """Delete ``name`` and create it again (a new incarnation: new topic id, offsets from 0).

    ``while_deleted`` runs between the two (say, to wait until a worker noticed).
    """

    async def go() -> None:
        admin = AIOKafkaAdminClient(**kafka_options())
        await admin.start()
        try:
            await admin.delete_topics([name])
            if while_deleted is not None:
                while_deleted()
            deadline = time.monotonic() + timeout
            while True:  # the controller refuses the name while the deletion is in progress
                response = await admin.create_topics([NewTopic(name, partitions, 1)])
                errors = [code for _, code, *_ in response.topic_errors if code]
                if not errors:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"could not create {name} again: error codes {errors}")
                await asyncio.sleep(0.2)
        finally:
            await admin.close()

    run_async(go())


def topic_id(topic: str) -> str:
    """The topic's id (KIP-516), part of the invocation ids of its records."""
    from streamapp.runtime.topic_ids import TopicIds

    async def go() -> str:
        lookup = TopicIds(kafka_options())
        try:
            return (await lookup.lookup([topic]))[topic]
        finally:
            await lookup.close()

    return run_async(go())  # type: ignore[no-any-return]


def produce(topic: str, records: Iterable[tuple[bytes | str | None, bytes | str | None]],
            headers: list[tuple[str, bytes]] | None = None) -> None:
    """Produce key/value records (each with ``headers``) with a Python client and wait for the acks."""

    def b(x: bytes | str | None) -> bytes | None:
        return x.encode() if isinstance(x, str) else x

    async def go() -> None:
        producer = AIOKafkaProducer(**kafka_options(), acks="all", max_request_size=16 * 1024 * 1024)
        try:
            await producer.start()  # inside: a start that fails (refused credentials) still closes the client
            futures = [await producer.send(topic, key=b(k), value=b(v), headers=headers) for k, v in records]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    run_async(go())


def console_produce(topic: str, lines: Iterable[str]) -> None:
    """Feed ``key:value`` lines through Apache Kafka's kafka-console-producer."""
    env = dict(os.environ, KAFKA_PORT=bootstrap().rpartition(":")[2])
    text = "".join(line + "\n" for line in lines)
    proc = subprocess.run(
        [str(KAFKA_SH), "producer", topic], input=text, text=True, capture_output=True, env=env, timeout=120
    )
    assert proc.returncode == 0, f"console producer failed ({proc.returncode}):\n{proc.stderr}"


def kafka_tool(*args: str, timeout: float = 120) -> str:
    """Run an Apache Kafka command-line tool class against the test broker."""
    env = dict(os.environ, KAFKA_PORT=bootstrap().rpartition(":")[2])
    proc = subprocess.run([str(KAFKA_SH), "run", *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def reset_offsets(group: str, topic: str) -> None:
    """Rewind a (stopped) consumer group to the beginning of ``topic``."""
    kafka_tool(
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand", "--bootstrap-server", bootstrap(),
        "--group", group, "--topic", topic, "--reset-offsets", "--to-earliest", "--execute",
    )


@dataclass
class Record:
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    partition: int
    offset: int

    def json(self) -> Any:
        return json.loads(self.value or b"null")


async def assign_whole_topic(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Assign every partition of ``topic`` to ``consumer`` (asking for fresh metadata once if unknown)."""
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    if tps:
        consumer.assign(tps)
    return tps


async def read_records(servers: str, topic: str, within: float, *, partial_ok: bool,
                       options: dict[str, Any] | None = None) -> list[Any]:
    """aiokafka records of every partition of ``topic`` below its end offsets when called.

    In partition/offset order. Past ``within`` seconds returns what was read when
    ``partial_ok``, raises TimeoutError otherwise.
    """
    consumer = AIOKafkaConsumer(**(options or {"bootstrap_servers": servers}), enable_auto_commit=False,
                                max_partition_fetch_bytes=16 * 1024 * 1024)
    await consumer.start()
    try:
        tps = await assign_whole_topic(consumer, topic)
        if not tps:
            return []
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + within
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            if time.monotonic() > deadline:
                if partial_ok:
                    break
                raise TimeoutError(f"reading {topic} took longer than {within:.0f}s")
            for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                out.extend(m for m in msgs if m.offset < end[tp])
        return sorted(out, key=lambda m: (m.partition, m.offset))
    finally:
        await consumer.stop()


def read_topic(topic: str, *, timeout: float = 60.0) -> list[Record]:
    """Every record currently in ``topic`` (all partitions), in partition/offset order.

    Reads up to the end offsets taken before the read and raises if it cannot
    get there in ``timeout``: an empty answer means the topic held nothing,
    never that the read was slow.
    """
    raw = run_async(read_records(bootstrap(), topic, timeout, partial_ok=False, options=kafka_options()))
    return [Record(m.key, m.value, dict(m.headers), m.partition, m.offset) for m in raw]


# -- workers --------------------------------------------------------------
@dataclass
class Worker:
    """A streamapp worker subprocess with its own app id, data dir and web port."""

    app_id: str
    data_dir: Path
    env: dict[str, str]
    log_path: Path
    web_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self, wait: bool = True, timeout: float = 90.0, broker: str | None = None) -> Worker:
        assert self.proc is None or self.proc.poll() is not None, "worker already running"
        env = dict(os.environ)
        env.update(self.env)
        env.update(
            STREAMAPP_APP_ID=self.app_id,
            STREAMAPP_DATA_DIR=str(self.data_dir),
            STREAMAPP_WEB_PORT=str(self.web_port),
            STREAMAPP_BROKER=broker or broker_url(),
            PYTHONUNBUFFERED="1",
        )
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamapp", "worker", "-l", "info"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 90.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            # A blocking client: polled while the worker's port is not open yet, an asyncio client
            # left an unclosed transport now and then (a ResourceWarning that failed a later test).
            where = urllib.parse.urlsplit(self.url)  # a subclass may serve another host
            conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=READ_TIMEOUT)
            try:
                conn.request("GET", "/health")
                resp = conn.getresponse()
                return resp.status == 200 and bool(json.loads(resp.read()).get("ready"))
            except (OSError, http.client.HTTPException, ValueError):
                return False
            finally:
                conn.close()

        wait_for(ready, timeout=timeout, what=f"worker {self.app_id} to be ready", detail=self.tail)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    def kill(self) -> None:
        """SIGKILL (a crash): no shutdown code runs."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)

    def restart(self, wait: bool = True) -> Worker:
        self.kill()
        return self.start(wait=wait)

    # -- HTTP -----------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                raw: bytes | None = None, timeout: float = 60.0) -> tuple[int, Any]:
        async def go() -> tuple[int, Any]:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
                data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
                hdrs = {"content-type": "application/json", **(headers or {})}
                async with session.request(method, self.url + path, data=data, headers=hdrs) as resp:
                    text = await resp.text()
                    try:
                        return resp.status, json.loads(text) if text else None
                    except ValueError:
                        return resp.status, text

        return run_async(go())  # type: ignore[no-any-return]

    def invocation(self, inv_id: str) -> dict[str, Any]:
        """The invocation's view, or {"status": None} while the worker does not know it yet."""
        status, body = self.request("GET", f"/invocations/{inv_id}", timeout=READ_TIMEOUT)
        return body if status == 200 else {"status": None}  # type: ignore[no-any-return]

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path, timeout=READ_TIMEOUT)
        if status != 200:
            raise ValueError(f"GET {path} -> {status}: {body}")
        return body


class WorkerFactory:
    """Creates workers for one test; stops every one of them at the end."""

    def __init__(self, base: Path, app_id: str, env: dict[str, str]) -> None:
        self.base = base
        self.app_id = app_id
        self.env = env
        self.workers: list[Worker] = []

    def new(self, name: str | None = None, env: dict[str, str] | None = None, start: bool = True) -> Worker:
        name = name or f"w{len(self.workers)}"
        worker = Worker(
            app_id=self.app_id,
            data_dir=self.base / name,
            env={**self.env, **(env or {})},
            log_path=self.base / f"{name}.log",
        )
        self.workers.append(worker)
        if start:
            worker.start()
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                worker.stop()


class Downstream:
    """The downstream social-media backend as a subprocess (port from the OS)."""

    def __init__(self, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> Downstream:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamapp.testing.downstream", "--port", "0", *self.args],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        log.close()

        def listening() -> str:
            for line in self.log_path.read_text().splitlines():
                if "listening on " in line:
                    return line.split("listening on ", 1)[1].strip()
            return ""

        self.url = wait_for(listening, timeout=30, what="the downstream backend to listen")
        return self

    def records(self) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            async with aiohttp.ClientSession() as session, session.get(self.url + "/records") as resp:
                return await resp.json()  # type: ignore[no-any-return]

        return run_async(go())  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
