"""A worker on an authenticated, encrypted cluster: SASL_SSL with SCRAM-SHA-512, and mTLS.

The secured broker is ``tools/kafka/kafka.sh`` with ``KAFKA_SECURITY=sasl_ssl``,
started once for this module with its ports from the OS and its data (CA,
certificates, SCRAM users) under the module's tmp dir; the plain test broker
is not used here. Its SASL_SSL listener takes user alice, whose password is
made up per run; its mTLS listener takes a certificate signed by its CA.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError

from tests import harness


@dataclass
class SecureBroker:
    port: int
    mtls_port: int
    password: str
    tls: Path  # CA, broker and client certificates (PEM)
    env: dict[str, str]  # kafka.sh's environment for this broker

    def worker_env(self, password: str | None = None) -> dict[str, str]:
        """A worker's settings for the SASL_SSL listener (with another password when given)."""
        return {
            "STREAMAPP_SECURITY_PROTOCOL": "SASL_SSL",
            "STREAMAPP_SASL_MECHANISM": "SCRAM-SHA-512",
            "STREAMAPP_SASL_USERNAME": "alice",
            "STREAMAPP_SASL_PASSWORD": password or self.password,
            "STREAMAPP_SSL_CA_FILE": str(self.tls / "ca.pem"),
        }

    def produce(self, topic: str, lines: list[str]) -> None:
        """Feed ``key:value`` lines with kafka-console-producer over SASL_SSL (kafka.sh passes its client config)."""
        proc = subprocess.run([str(harness.KAFKA_SH), "producer", topic], input="".join(f"{x}\n" for x in lines),
                              text=True, capture_output=True, env=self.env, timeout=120)
        assert proc.returncode == 0, f"console producer failed ({proc.returncode}):\n{proc.stderr}"


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    base = tmp_path_factory.mktemp("secure-kafka")
    port, controller, mtls = (harness.free_port() for _ in range(3))
    password = secrets.token_urlsafe(18)
    env = dict(os.environ, KAFKA_SECURITY="sasl_ssl", STREAMAPP_DATA_DIR=str(base), KAFKA_PORT=str(port),
               KAFKA_CONTROLLER_PORT=str(controller), KAFKA_MTLS_PORT=str(mtls), KAFKA_SASL_PASSWORD=password,
               KAFKA_HEAP="384m")
    up = subprocess.run([str(harness.KAFKA_SH), "up"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, f"secure broker did not start:\n{up.stderr}"
        # kafka-secure, or kafka-secure-<version> for another KAFKA_VERSION (make test-compat)
        tls = next(base.glob("kafka-secure*/tls"))
        yield SecureBroker(port, mtls, password, tls, env)
    finally:
        subprocess.run([str(harness.KAFKA_SH), "down"], env=env, capture_output=True, timeout=60)


@pytest.fixture
def secure_workers(tmp_path: Path) -> Iterator[harness.WorkerFactory]:
    posts, updates, dead = harness.unique("posts"), harness.unique("locations"), harness.unique("dlq")
    env = {  # the worker creates these topics itself, over SASL_SSL (the broker auto-creates nothing)
        "STREAMAPP_SUBSCRIPTIONS": f"{posts}=UserFeed/ProcessPost,{updates}=PackageTracker/UpdateLocation",
        "STREAMAPP_DEAD_LETTER_TOPIC": dead,
        "STREAMAPP_MODERATION_POLL_INTERVAL": "1",
        "STREAMAPP_PARTITIONS": "2",
    }
    factory = harness.WorkerFactory(tmp_path, harness.unique("secure"), env)
    yield factory
    factory.stop_all()


def topics_of(worker: harness.Worker) -> tuple[str, str]:
    subs = dict(s.split("=") for s in worker.env["STREAMAPP_SUBSCRIPTIONS"].split(","))
    return (next(t for t, target in subs.items() if target == "UserFeed/ProcessPost"),
            next(t for t, target in subs.items() if target == "PackageTracker/UpdateLocation"))


def test_sasl_ssl_scram__seed_walkthrough_runs_end_to_end_and_the_password_is_never_shown(
        secure_broker, secure_workers):
    worker = secure_workers.new(env=secure_broker.worker_env(), start=False)
    worker.start(broker=f"kafka://127.0.0.1:{secure_broker.port}", timeout=120)
    posts, updates = topics_of(worker)

    secure_broker.produce(posts, [
        'userid1:{"content": "Hi! This is my first post!", "metadata": "public"}',
        'userid2:{"content": "Hi! This is my first post!", "metadata": "public"}',
    ])
    status, body = worker.request("POST", "/PackageTracker/package123/RegisterPackage",
                                  {"finalDestination": "Bridge 6, Amsterdam"})
    assert (status, body) == (200, None)
    secure_broker.produce(updates, [
        'package123:{"timestamp": "2024-10-10 13:00", "location": "Pinetree Road 5, Paris"}'])
    expected = {"finalDestination": "Bridge 6, Amsterdam",
                "locations": [{"timestamp": "2024-10-10 13:00", "location": "Pinetree Road 5, Paris"}]}
    harness.wait_for(lambda: worker.request("GET", "/PackageTracker/package123/getPackageInfo") == (200, expected),
                     timeout=60, what="the location update from Kafka", detail=worker.tail)
    harness.wait_for(lambda: worker.log().count("Invocation completed successfully method=UserFeed/ProcessPost") == 2,
                     timeout=90, what="both posts processed to completion", detail=worker.tail)
    log = worker.log()
    assert sorted(re.findall(r"^Updating the user feed for user (\w+) with post", log, re.M)) == ["userid1", "userid2"]
    assert "security_protocol=SASL_SSL sasl_mechanism=SCRAM-SHA-512 sasl_username=alice" in log, \
        "the start-up line names the connection"
    assert re.search(r"Topics this worker creates get replication_factor=1\s*$", log, re.M), \
        "one broker: RF 1 (min(3, brokers)), no min.insync.replicas"

    shown = {path: str(worker.get(path)) for path in ("/health", "/subscriptions")}
    for path, text in shown.items():
        assert secure_broker.password not in text, f"the SASL password shows in {path}"
    assert secure_broker.password not in log, "the SASL password shows in the worker log"


def test_sasl_ssl_scram__the_rigs_own_clients_connect_with_the_workers_settings(secure_broker, monkeypatch):
    """The bench's and the tests' clients (``harness.kafka_options``): admin, producer and reader over SASL_SSL."""
    monkeypatch.setenv("STREAMAPP_TEST_BROKER", f"kafka://127.0.0.1:{secure_broker.port}")
    for name, value in secure_broker.worker_env().items():
        monkeypatch.setenv(name, value)
    assert harness.kafka_options()["security_protocol"] == "SASL_SSL"
    topic = harness.unique("rig-secure")
    harness.create_topics([topic])
    harness.produce(topic, [("k1", "v1"), ("k2", "v2")])
    records = harness.read_topic(topic, timeout=60)
    assert [(r.key, r.value) for r in records] == [(b"k1", b"v1"), (b"k2", b"v2")]
    monkeypatch.setenv("STREAMAPP_SASL_PASSWORD", "not-" + secure_broker.password)
    # The same settings, wrongly: refused (aiokafka logs the SASL failure and cannot bootstrap).
    with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
        harness.produce(topic, [("k3", "v3")])


def test_sasl_ssl_scram__wrong_password__worker_exits_at_once_with_a_clear_message(secure_broker, secure_workers):
    wrong = secrets.token_urlsafe(18)
    # A broker wait longer than the bound: the refusal must end the start, not the wait running out.
    worker = secure_workers.new(env={**secure_broker.worker_env(password=wrong), "STREAMAPP_BROKER_WAIT": "300"},
                                start=False)
    began = time.monotonic()
    worker.start(wait=False, broker=f"kafka://127.0.0.1:{secure_broker.port}")
    assert worker.proc is not None
    try:
        code = worker.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker did not exit within 60 s:\n{worker.tail()}") from None
    log = worker.log()
    assert code == 1, (code, log)
    assert time.monotonic() - began < 60
    assert "The broker refused this worker" in log and "SaslAuthenticationFailed" in log, worker.tail()
    assert "sasl_username=alice" in log, "the message names the user"
    assert wrong not in log and secure_broker.password not in log, "a password shows in the worker's output"


def test_ssl__a_ca_that_did_not_sign_the_broker__worker_exits_at_once_naming_the_certificate_check(
        secure_broker, secure_workers, tmp_path):
    other_ca = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
                    "-keyout", str(tmp_path / "other-ca.key"), "-out", str(other_ca)], check=True, capture_output=True)
    worker = secure_workers.new(env={**secure_broker.worker_env(), "STREAMAPP_SSL_CA_FILE": str(other_ca),
                                     "STREAMAPP_BROKER_WAIT": "300"}, start=False)
    worker.start(wait=False, broker=f"kafka://127.0.0.1:{secure_broker.port}")
    assert worker.proc is not None
    code = worker.proc.wait(timeout=60)
    log = worker.log()
    assert code != 0, log
    assert "The broker refused this worker" in log and "SSLCertVerificationError" in log, worker.tail()
    assert secure_broker.password not in log


def test_mtls__worker_with_a_client_certificate_runs_on_the_ssl_listener(secure_broker, secure_workers):
    tls = secure_broker.tls
    worker = secure_workers.new(env={
        "STREAMAPP_SECURITY_PROTOCOL": "SSL",
        "STREAMAPP_SSL_CA_FILE": str(tls / "ca.pem"),
        "STREAMAPP_SSL_CERT_FILE": str(tls / "client.pem"),
        "STREAMAPP_SSL_KEY_FILE": str(tls / "client.key"),
    }, start=False)
    worker.start(broker=f"kafka://127.0.0.1:{secure_broker.mtls_port}", timeout=120)
    status, body = worker.request("POST", "/PackageTracker/p1/RegisterPackage", {"finalDestination": "Utrecht"})
    assert (status, body) == (200, None)
    assert worker.request("GET", "/PackageTracker/p1/getPackageInfo") == (
        200, {"finalDestination": "Utrecht", "locations": []})


def test_replication_factor__more_than_the_cluster_has__worker_exits_naming_the_setting(
        secure_broker, secure_workers):
    worker = secure_workers.new(env={**secure_broker.worker_env(), "STREAMAPP_REPLICATION_FACTOR": "2"}, start=False)
    worker.start(wait=False, broker=f"kafka://127.0.0.1:{secure_broker.port}")
    assert worker.proc is not None
    code = worker.proc.wait(timeout=60)
    assert code != 0
    assert "STREAMAPP_REPLICATION_FACTOR=2 but the cluster has 1 broker(s)" in worker.log(), worker.tail()
