"""runtime/connection.py: one reading of the cluster settings for aiokafka's clients and for Faust's."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers import aiokafka as faust_aiokafka

from streamapp.config import Settings
from streamapp.runtime import connection, faust_adapter

PASSWORD = "pw-5ecret-value"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a client certificate signed by it (PEM), made with openssl."""
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ca", "-keyout", "ca.key",
        "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=client", "-keyout", "client.key", "-out", "client.csr")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
        "-out", "client.pem")
    return d


def settings(**env: str) -> Settings:
    return Settings.from_env({"STREAMAPP_BROKER": "kafka://h1:9093;kafka://h2:9093", **env})


def sasl_ssl(tls: Path) -> Settings:
    return settings(STREAMAPP_SECURITY_PROTOCOL="SASL_SSL", STREAMAPP_SASL_MECHANISM="SCRAM-SHA-512",
                    STREAMAPP_SASL_USERNAME="alice", STREAMAPP_SASL_PASSWORD=PASSWORD,
                    STREAMAPP_SSL_CA_FILE=str(tls / "ca.pem"))


def test_plaintext__servers_only_and_no_faust_credentials() -> None:
    s = settings()
    assert connection.client_options(s) == {"bootstrap_servers": ["h1:9093", "h2:9093"],
                                            "security_protocol": "PLAINTEXT"}
    assert connection.faust_credentials(s) is None


async def test_sasl_ssl__aiokafka_and_faust_get_the_same_options_with_hostname_checked(tls: Path) -> None:
    s = sasl_ssl(tls)
    context = connection.ssl_context(s)
    assert context is not None and context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "ca"),),)]
    options = connection.client_options(s, context)
    assert options == {"bootstrap_servers": ["h1:9093", "h2:9093"], "security_protocol": "SASL_SSL",
                       "ssl_context": context, "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "alice",
                       "sasl_plain_password": PASSWORD}
    AIOKafkaAdminClient(**options)  # every option is one aiokafka's clients take
    credentials = connection.faust_credentials(s, context)
    assert isinstance(credentials, SASLCredentials)
    # What Faust hands its consumer and producer is what the worker's own clients get.
    faust_side = dict(faust_aiokafka.credentials_to_aiokafka_auth(credentials))
    assert faust_side == {k: v for k, v in options.items() if k != "bootstrap_servers"}
    assert PASSWORD not in repr(credentials)


def test_sasl_plaintext__no_tls_context() -> None:
    s = settings(STREAMAPP_SECURITY_PROTOCOL="SASL_PLAINTEXT", STREAMAPP_SASL_MECHANISM="PLAIN",
                 STREAMAPP_SASL_USERNAME="bob", STREAMAPP_SASL_PASSWORD=PASSWORD)
    options = connection.security_options(s)
    assert "ssl_context" not in options and options["security_protocol"] == "SASL_PLAINTEXT"
    faust_side = dict(faust_aiokafka.credentials_to_aiokafka_auth(connection.faust_credentials(s)))
    assert faust_side == {**options, "ssl_context": None}


def test_mtls__client_certificate_loaded_and_faust_gets_ssl_credentials(tls: Path) -> None:
    s = settings(STREAMAPP_SECURITY_PROTOCOL="SSL", STREAMAPP_SSL_CA_FILE=str(tls / "ca.pem"),
                 STREAMAPP_SSL_CERT_FILE=str(tls / "client.pem"), STREAMAPP_SSL_KEY_FILE=str(tls / "client.key"))
    context = connection.ssl_context(s)
    credentials = connection.faust_credentials(s, context)
    assert isinstance(credentials, SSLCredentials)
    assert dict(faust_aiokafka.credentials_to_aiokafka_auth(credentials)) == connection.security_options(s, context)
    # The key does not match the certificate: the start stops naming the files.
    wrong = settings(STREAMAPP_SECURITY_PROTOCOL="SSL", STREAMAPP_SSL_CERT_FILE=str(tls / "client.pem"),
                     STREAMAPP_SSL_KEY_FILE=str(tls / "ca.key"))
    with pytest.raises(SystemExit) as exc:
        connection.ssl_context(wrong)
    assert str(exc.value).startswith(f"Cannot load the TLS files STREAMAPP_SSL_CERT_FILE={tls / 'client.pem'} "
                                     f"STREAMAPP_SSL_KEY_FILE={tls / 'ca.key'}: ")


def test_describe_and_redact__what_logs_and_errors_show_never_has_the_password(tls: Path) -> None:
    s = sasl_ssl(tls)
    line = connection.describe(s)
    assert line == (f"broker=kafka://h1:9093;kafka://h2:9093 security_protocol=SASL_SSL sasl_mechanism=SCRAM-SHA-512 "
                    f"sasl_username=alice ssl_ca_file={tls / 'ca.pem'}")
    assert connection.redact(f"failed for alice:{PASSWORD}", s) == "failed for alice:***"
    assert PASSWORD not in repr(s) and PASSWORD not in str(s)


@pytest.mark.parametrize(("configured", "brokers", "expected"), [
    (None, 1, 1), (None, 2, 2), (None, 3, 3), (None, 6, 3), (2, 3, 2), (5, 5, 5)])
def test_replication_factor__configured_else_at_most_three(configured: int | None, brokers: int,
                                                           expected: int) -> None:
    assert connection.replication_factor(configured, brokers) == expected


def test_replication_factor__more_than_the_brokers_stops_naming_the_setting() -> None:
    with pytest.raises(SystemExit, match="STREAMAPP_REPLICATION_FACTOR=3 but the cluster has 1 broker"):
        connection.replication_factor(3, 1)


@pytest.mark.parametrize(("replication", "config"), [
    (1, {}), (2, {}), (3, {"min.insync.replicas": "2"}), (5, {"min.insync.replicas": "4"})])
async def test_created_topics__get_min_insync_replicas_from_their_replication(
        monkeypatch: pytest.MonkeyPatch, replication: int, config: dict[str, str]) -> None:
    created: list[dict[str, Any]] = []

    async def create(self: Any, owner: Any, client: Any, topic: str, partitions: int, replicas: int,
                     **kwargs: Any) -> None:
        created.append({"topic": topic, "replicas": replicas, **kwargs})

    monkeypatch.setattr(faust_aiokafka.Transport, "_create_topic", create)
    transport = faust_adapter.Transport.__new__(faust_adapter.Transport)
    await transport._create_topic(None, None, "t", 4, replication, config={"cleanup.policy": "compact"})
    assert created == [{"topic": "t", "replicas": replication, "config": {**config, "cleanup.policy": "compact"}}]


async def test_created_topics__a_topic_the_cluster_has_is_not_created_again(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[str] = []
    reads: list[int] = []

    async def create(self: Any, owner: Any, client: Any, topic: str, partitions: int, replicas: int,
                     **kwargs: Any) -> None:
        created.append(topic)

    class Client:
        async def fetch_all_metadata(self) -> Any:
            reads.append(1)
            return SimpleNamespace(topics=lambda: {"there"})

    monkeypatch.setattr(faust_aiokafka.Transport, "_create_topic", create)
    transport = faust_adapter.Transport.__new__(faust_adapter.Transport)
    for topic in ("there", "new", "there"):
        await transport._create_topic(None, Client(), topic, 4, 1)
    assert created == ["new"]
    assert reads == [1]  # one read answers for the start-up's creations
    await transport._create_topic(None, Client(), "there", 4, 1, ensure_created=True)
    assert created == ["new", "there"]  # asked to make sure: Faust's own creation decides
