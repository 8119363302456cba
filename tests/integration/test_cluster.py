"""A worker on a 3-broker KRaft cluster: replication factor 3, a broker killed mid-run, a broker down at start.

The cluster is ``tools/kafka/kafka.sh`` with ``KAFKA_BROKERS=3``, started once
for this module with its ports from the OS and its data under the module's
tmp dir (the suite's single broker is not used here). While the module runs,
``STREAMAPP_TEST_BROKER`` names the three brokers, so the harness's producer
and readers use the cluster. The handler is ``Test/Append`` (tests/support):
it appends each event's number to its key's state, so the state shows every
event that ran, once, in the order it ran.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from tests import harness
from tests.support.services import ledger

BROKERS = 3
KEYS, PER_KEY = 30, 10  # 300 events


@dataclass
class Cluster:
    ports: list[int]
    env: dict[str, str]  # kafka.sh's environment for this cluster

    @property
    def url(self) -> str:
        """A worker's STREAMAPP_BROKER: the three brokers, Faust's way (``;``-separated URLs)."""
        return ";".join(f"kafka://127.0.0.1:{p}" for p in self.ports)

    def kafka(self, *args: str, timeout: float = 180) -> str:
        proc = subprocess.run([str(harness.KAFKA_SH), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert proc.returncode == 0, f"kafka.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        return proc.stdout

    def describe(self, pattern: str) -> dict[str, dict[str, object]]:
        """kafka-topics --describe of the topics matching ``pattern``: RF, configs and partition leaders of each."""
        out = self.kafka("kafka-topics", "--describe", "--topic", pattern)
        topics: dict[str, dict[str, object]] = {}
        for line in out.splitlines():
            head = re.match(r"Topic: (\S+)\s+TopicId: \S+\s+PartitionCount: (\d+)\s+ReplicationFactor: (\d+)"
                            r"\s+Configs: ?(\S*)", line)
            if head:
                configs = dict(kv.split("=", 1) for kv in head[4].split(",") if kv)
                topics[head[1]] = {"partitions": int(head[2]), "rf": int(head[3]), "configs": configs,
                                   "leaders": []}
                continue
            part = re.match(r"\s+Topic: (\S+)\s+Partition: \d+\s+Leader: (-?\d+)\s+Replicas: (\S+)\s+Isr: (\S*)",
                            line)
            if part:
                leaders = topics[part[1]]["leaders"]
                assert isinstance(leaders, list)
                leaders.append(int(part[2]))
        return topics


async def _commit_once(servers: str, topic: str) -> None:
    # A group's first commit makes the broker create __consumer_offsets (RF 3 here: all brokers must be up).
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=harness.unique("warm-up"),
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.commit({tp: 0})
    finally:
        await consumer.stop()


async def _create_topics(servers: str, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, BROKERS, topic_configs={"min.insync.replicas": "2"})
                                   for n in names])
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("kafka-cluster")
    ports = [harness.free_port() for _ in range(BROKERS)]
    controllers = [harness.free_port() for _ in range(BROKERS)]
    env = dict(os.environ, KAFKA_BROKERS=str(BROKERS), STREAMAPP_DATA_DIR=str(base),
               KAFKA_PORTS=",".join(map(str, ports)), KAFKA_CONTROLLER_PORTS=",".join(map(str, controllers)),
               KAFKA_HEAP="320m", KAFKA_START_WAIT="150")
    env.pop("KAFKA_PORT", None)
    env.pop("KAFKA_CONTROLLER_PORT", None)
    found = Cluster(ports, env)
    servers = ",".join(f"127.0.0.1:{p}" for p in ports)
    with pytest.MonkeyPatch.context() as mp:
        try:
            found.kafka("up", timeout=300)
            mp.setenv("STREAMAPP_TEST_BROKER", f"kafka://{servers}")
            warm = harness.unique("warm-up")
            harness.run_async(_create_topics(servers, [warm], 1))
            harness.run_async(_commit_once(servers, warm))
            yield found
        finally:
            subprocess.run([str(harness.KAFKA_SH), "down"], env=env, capture_output=True, timeout=120)


@dataclass
class App:
    source: str
    dead_letters: str
    ledger: str
    workers: harness.WorkerFactory


@pytest.fixture
def app(cluster: Cluster, tmp_path: Path) -> Iterator[App]:
    source, dead = harness.unique("src"), harness.unique("dlq")
    harness.run_async(_create_topics(harness.bootstrap(), [source], 3))  # the worker creates the dead-letter topic
    env = {
        "STREAMAPP_SUBSCRIPTIONS": f"{source}=Test/Append",
        "STREAMAPP_SERVICES": "tests.support.services:services",
        "STREAMAPP_TEST_LEDGER": str(tmp_path / "ledger.jsonl"),
        "STREAMAPP_DEAD_LETTER_TOPIC": dead,
        "STREAMAPP_PARTITIONS": "4",
    }
    factory = harness.WorkerFactory(tmp_path, harness.unique("cluster"), env)
    yield App(source, dead, env["STREAMAPP_TEST_LEDGER"], factory)
    factory.stop_all()


def events(n_from: int, n_to: int, work: float = 0.0) -> list[tuple[str, str]]:
    """Events n_from..n_to-1 of the workload: event n goes to key k(n % KEYS) and carries its number."""
    return [(f"k{n % KEYS}", json.dumps({"n": n, "work": work})) for n in range(n_from, n_to)]


def appended(app: App) -> list[dict[str, object]]:
    return [e for e in ledger(app.ledger) if e["event"] == "append"]


def test_cluster__topics_get_rf_3_and_min_insync_2__a_broker_killed_mid_run_loses_duplicates_and_reorders_nothing(
        cluster, app):
    worker = app.workers.new(start=False)
    worker.start(broker=cluster.url, timeout=150)
    rf_line = r"Topics this worker creates get replication_factor=3 min.insync.replicas=2\s*$"
    assert re.search(rf_line, worker.log(), re.M), worker.tail()

    topics = cluster.describe(f"{worker.app_id}.*|{app.dead_letters}")
    changelogs = [t for t in topics if t.endswith("-changelog")]
    internal = [t for t in topics if t.startswith(worker.app_id) and t not in changelogs]
    assert changelogs and internal and app.dead_letters in topics, sorted(topics)
    for name, topic in topics.items():
        assert topic["rf"] == 3, (name, topic)
        assert topic["configs"].get("min.insync.replicas") == "2", (name, topic)  # type: ignore[attr-defined]

    # The node leading most partitions of the worker's topics is the one to kill.
    leaders = Counter(leader for t in topics.values() for leader in t["leaders"])  # type: ignore[attr-defined]
    victim = leaders.most_common(1)[0][0]

    # 0.2 s of work per event, 5 events a key in the first batch: a key takes a second or more, so the
    # kill lands with most of the batch to go however fast the machine.
    harness.produce(app.source, events(0, 150, work=0.2))
    harness.wait_for(lambda: len(appended(app)) >= 30, timeout=120, what="30 events processed",
                     detail=worker.tail)
    cluster.kafka("kill-node", str(victim))
    done_at_kill = len(appended(app))
    assert done_at_kill < 150, "the kill came after the first batch was done: not mid-run"
    harness.produce(app.source, events(150, 250, work=0.2))  # acks=all: 2 of 3 in sync
    # Every partition keeps a leader on the two live brokers: the worker goes on while the broker is down.
    harness.wait_while_moving(lambda: len(appended(app)), lambda n: n >= 250, still=90,
                              what=f"progress with node {victim} down", detail=worker.tail)
    cluster.kafka("start-node", str(victim), timeout=240)
    harness.produce(app.source, events(250, 300))
    harness.wait_while_moving(lambda: len(appended(app)), lambda n: n >= 300, still=90,
                              what="all 300 events processed", detail=worker.tail)

    expected = {f"k{k}": [n for n in range(300) if n % KEYS == k] for k in range(KEYS)}
    states = {key: worker.request("GET", f"/Test/{key}/Seen")[1] for key in expected}
    assert states == expected, "per-key state: an event lost, run twice or out of order"
    runs = Counter((e["key"], e["n"]) for e in appended(app))
    assert sorted(runs) == sorted((key, n) for key, ns in expected.items() for n in ns)
    assert set(runs.values()) == {1}, f"steps run twice: {[k for k, c in runs.items() if c > 1]}"
    assert len({e["inv"] for e in appended(app)}) == 300, "one invocation per event"
    assert not harness.read_topic(app.dead_letters), "nothing dead-lettered"


async def _live_brokers(servers: str) -> int:
    """How many brokers the cluster's metadata lists; -1 when the node asked was the one just killed."""
    admin = AIOKafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=5000)
    try:
        await admin.start()
        return len((await admin.describe_cluster())["brokers"])
    except KafkaError:
        return -1
    finally:
        await admin.close()


def kill_and_wait_fenced(cluster: Cluster, node: int) -> None:
    """SIGKILL ``node`` and wait until the controller fenced it (the metadata lists the two others only)."""
    cluster.kafka("kill-node", str(node))
    harness.wait_for(lambda: harness.run_async(_live_brokers(harness.bootstrap())) == BROKERS - 1, timeout=60,
                     what=f"node {node} fenced")


def test_cluster__one_broker_down_from_the_start__worker_starts_and_serves_http_and_kafka(cluster, app):
    kill_and_wait_fenced(cluster, 3)
    try:
        worker = app.workers.new(start=False)
        worker.start(broker=cluster.url, timeout=150)
        # The default RF is min(3, the brokers the cluster's metadata lists at start-up): the live ones.
        assert re.search(r"Topics this worker creates get replication_factor=2\s*$", worker.log(), re.M), \
            worker.tail()
        status, body = worker.request("POST", "/Test/h1/Append", {"n": 7})
        assert (status, body) == (200, [7])
        harness.produce(app.source, events(0, 60))
        harness.wait_while_moving(lambda: len(appended(app)), lambda n: n >= 61, still=90,
                                  what="60 events from Kafka with node 3 down", detail=worker.tail)
        expected = {f"k{k}": [n for n in range(60) if n % KEYS == k] for k in range(KEYS)}
        assert {key: worker.request("GET", f"/Test/{key}/Seen")[1] for key in expected} == expected
        assert worker.request("GET", "/Test/h1/Seen") == (200, [7])
    finally:
        cluster.kafka("start-node", "3", timeout=240)


def test_cluster__rf_3_set__worker_restarted_while_a_broker_is_down__starts_and_serves(cluster, app):
    worker = app.workers.new(env={"STREAMAPP_REPLICATION_FACTOR": "3"}, start=False)
    worker.start(broker=cluster.url, timeout=150)
    harness.produce(app.source, events(0, 30))
    harness.wait_while_moving(lambda: len(appended(app)), lambda n: n >= 30, still=90,
                              what="30 events with every broker up", detail=worker.tail)
    worker.stop()
    kill_and_wait_fenced(cluster, 2)
    try:
        worker.start(broker=cluster.url, timeout=150)
        harness.produce(app.source, events(30, 60))
        harness.wait_while_moving(lambda: len(appended(app)), lambda n: n >= 60, still=90,
                                  what="30 more events with node 2 down", detail=worker.tail)
        expected = {f"k{k}": [n for n in range(60) if n % KEYS == k] for k in range(KEYS)}
        assert {key: worker.request("GET", f"/Test/{key}/Seen")[1] for key in expected} == expected
    finally:
        cluster.kafka("start-node", "2", timeout=240)


def test_cluster__kafka_sh_status_names_the_node_that_is_down(cluster):
    cluster.kafka("kill-node", "2")
    try:
        proc = subprocess.run([str(harness.KAFKA_SH), "status"], env=cluster.env, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 1
        assert re.search(rf"^node 2 down 127\.0\.0\.1:{cluster.ports[1]}$", proc.stdout, re.M), proc.stdout
        assert len(re.findall(r"^node [13] up \(pid \d+\)", proc.stdout, re.M)) == 2, proc.stdout
    finally:
        cluster.kafka("start-node", "2", timeout=240)
    assert subprocess.run([str(harness.KAFKA_SH), "status"], env=cluster.env, capture_output=True,
                          timeout=60).returncode == 0


