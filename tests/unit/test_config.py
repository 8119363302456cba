"""Settings.from_env: values parse, and bad ones stop the worker with a message naming them."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamapp.config import DEFAULT_SUBSCRIPTIONS, Settings


def test_defaults_without_environment() -> None:
    s = Settings.from_env({})
    assert (s.web_host, s.web_port, s.partitions, s.session_timeout) == ("127.0.0.1", 8080, 8, 10.0)
    assert s.subscriptions == DEFAULT_SUBSCRIPTIONS
    assert s.data_dir == Path("data")


def test_membership__dynamic_with_one_standby_by_default_and_read_from_the_environment() -> None:
    s = Settings.from_env({})
    assert (s.instance_id, s.standby_replicas) == (None, 1)
    s = Settings.from_env({"STREAMAPP_INSTANCE_ID": "host-7.worker_a", "STREAMAPP_STANDBY_REPLICAS": "0"})
    assert (s.instance_id, s.standby_replicas) == ("host-7.worker_a", 0)
    assert Settings.from_env({"STREAMAPP_INSTANCE_ID": ""}).instance_id is None  # empty: unset


def test_values_are_read_and_typed() -> None:
    s = Settings.from_env({
        "STREAMAPP_WEB_PORT": "0", "STREAMAPP_PARTITIONS": "3", "STREAMAPP_SESSION_TIMEOUT": "6.5",
        "STREAMAPP_SUBSCRIPTIONS": "a=S/h, b=T/g", "STREAMAPP_SERVICES": "m:x, n:y",
        "STREAMAPP_OPERATOR_TOKEN": "secret",
    })
    assert (s.web_port, s.partitions, s.session_timeout) == (0, 3, 6.5)
    assert s.subscriptions == (("a", "S/h"), ("b", "T/g"))
    assert s.extra_services == ("m:x", "n:y")
    assert "secret" not in repr(s)


@pytest.mark.parametrize(("name", "raw", "message"), [
    ("STREAMAPP_WEB_PORT", "http", "is not a valid int"),
    ("STREAMAPP_WEB_PORT", "70000", "must be between 0 and 65535"),
    ("STREAMAPP_PARTITIONS", "0", "must be at least 1"),
    ("STREAMAPP_SESSION_TIMEOUT", "2", "between 6 and 1800"),
    ("STREAMAPP_SESSION_TIMEOUT", "nan", "between 6 and 1800"),
    ("STREAMAPP_MAX_RUNNING", "-1", "at least 1"),
    ("STREAMAPP_MAX_PENDING", "1.5", "is not a valid int"),
    ("STREAMAPP_PRODUCER_LINGER", "-0.1", "between 0 and 10"),
    ("STREAMAPP_MAX_BODY_BYTES", "0", "at least 1"),
    ("STREAMAPP_RESULTS_RETENTION", "0.5", "at least 1"),
    ("STREAMAPP_SUBSCRIPTIONS", "topic-without-target", "must look like topic=Service/handler"),
    ("STREAMAPP_REPLICATION_FACTOR", "0", "at least 1"),
    ("STREAMAPP_REPLICATION_FACTOR", "two", "is not a valid int"),
    ("STREAMAPP_STANDBY_REPLICAS", "-1", "between 0 and 10"),
    ("STREAMAPP_STANDBY_REPLICAS", "one", "is not a valid int"),
    ("STREAMAPP_INSTANCE_ID", "worker 1", "Kafka's group.instance.id"),
    ("STREAMAPP_INSTANCE_ID", "w/1", "Kafka's group.instance.id"),
    ("STREAMAPP_INSTANCE_ID", "..", "Kafka's group.instance.id"),
    ("STREAMAPP_INSTANCE_ID", "x" * 201, "1 to 200 letters"),
    ("STREAMAPP_SECURITY_PROTOCOL", "TLS", "must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ("STREAMAPP_SASL_USERNAME", "alice", "SASL settings need SASL_PLAINTEXT or SASL_SSL"),
    ("STREAMAPP_SSL_CA_FILE", "/etc/hostname", "TLS files need SSL or SASL_SSL"),
])
def test_bad_values_stop_with_a_message_naming_the_setting(name: str, raw: str, message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        Settings.from_env({name: raw})
    text = str(exc.value)
    assert message in text
    assert name in text or name == "STREAMAPP_SUBSCRIPTIONS"


@pytest.mark.parametrize(("raw", "expected"), [
    ("http://10.0.0.5:8080", "http://10.0.0.5:8080"),
    ("http://worker-1.internal", "http://worker-1.internal:9000"),  # port defaults to STREAMAPP_WEB_PORT
    ("https://[::1]:443/", "https://[::1]:443"),
])
def test_advertised_url__parsed_and_normalised(raw: str, expected: str) -> None:
    s = Settings.from_env({"STREAMAPP_ADVERTISED_URL": raw, "STREAMAPP_WEB_PORT": "9000"})
    assert s.advertised_url == expected


@pytest.mark.parametrize("raw", [
    "10.0.0.5:8080", "ftp://host:21", "http://", "http://host:99999", "http://host:8080/path",
    "http://host:8080?x=1", "http://user:pw@host:8080",
])
def test_advertised_url__bad_value_stops_with_a_message_naming_the_setting(raw: str) -> None:
    with pytest.raises(SystemExit) as exc:
        Settings.from_env({"STREAMAPP_ADVERTISED_URL": raw})
    assert "STREAMAPP_ADVERTISED_URL" in str(exc.value)


def test_table_dir__scoped_by_app_id_under_one_data_dir() -> None:
    a = Settings.from_env({"STREAMAPP_DATA_DIR": "/srv/d", "STREAMAPP_APP_ID": "orders"})
    b = Settings.from_env({"STREAMAPP_DATA_DIR": "/srv/d", "STREAMAPP_APP_ID": "billing"})
    assert a.table_dir != b.table_dir
    assert a.table_dir.is_relative_to(Path("/srv/d")) and b.table_dir.is_relative_to(Path("/srv/d"))


@pytest.mark.parametrize("raw", ["..", "a/b", "app id", ""])
def test_app_id__not_usable_as_topic_prefix_or_directory__stops_with_a_message(raw: str) -> None:
    with pytest.raises(SystemExit) as exc:
        Settings.from_env({"STREAMAPP_APP_ID": raw})
    assert "STREAMAPP_APP_ID" in str(exc.value)


def test_userfeed_config__its_own_settings_from_the_environment_validated_by_name() -> None:
    from streamapp.services import userfeed

    assert userfeed.Config.from_env({}) == userfeed.Config(poll_interval=5.0, downstream_url=None)
    got = userfeed.Config.from_env({"STREAMAPP_MODERATION_POLL_INTERVAL": "0.25",
                                    "STREAMAPP_DOWNSTREAM_URL": "http://127.0.0.1:8090"})
    assert got == userfeed.Config(poll_interval=0.25, downstream_url="http://127.0.0.1:8090")
    for bad in ("0", "nan", "soon"):
        with pytest.raises(SystemExit, match="STREAMAPP_MODERATION_POLL_INTERVAL"):
            userfeed.Config.from_env({"STREAMAPP_MODERATION_POLL_INTERVAL": bad})
    assert not hasattr(Settings(), "moderation_poll_interval")  # the runtime's settings do not carry it


SASL = {"STREAMAPP_SECURITY_PROTOCOL": "SASL_SSL", "STREAMAPP_SASL_MECHANISM": "scram-sha-512",
        "STREAMAPP_SASL_USERNAME": "alice", "STREAMAPP_SASL_PASSWORD": "pw-5ecret"}


def test_cluster_settings__read_normalised_and_the_password_kept_out_of_repr(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    s = Settings.from_env({**SASL, "STREAMAPP_SECURITY_PROTOCOL": "sasl_ssl", "STREAMAPP_SSL_CA_FILE": str(ca),
                           "STREAMAPP_REPLICATION_FACTOR": "3"})
    assert (s.security_protocol, s.sasl_mechanism, s.sasl_username, s.sasl_password) == (
        "SASL_SSL", "SCRAM-SHA-512", "alice", "pw-5ecret")
    assert (s.ssl_ca_file, s.ssl_cert_file, s.replication_factor) == (ca, None, 3)
    assert "pw-5ecret" not in repr(s)
    plain = Settings.from_env({})
    assert (plain.security_protocol, plain.sasl_password, plain.replication_factor) == ("PLAINTEXT", None, None)


@pytest.mark.parametrize(("change", "message"), [
    ({"STREAMAPP_SASL_PASSWORD": ""}, "STREAMAPP_SECURITY_PROTOCOL=SASL_SSL needs STREAMAPP_SASL_PASSWORD"),
    ({"STREAMAPP_SASL_MECHANISM": ""}, "needs STREAMAPP_SASL_MECHANISM"),
    ({"STREAMAPP_SASL_MECHANISM": "GSSAPI"}, "STREAMAPP_SASL_MECHANISM='GSSAPI' must be one of PLAIN, SCRAM-SHA-256"),
    ({"STREAMAPP_SSL_CA_FILE": "/nonexistent/ca.pem"}, "STREAMAPP_SSL_CA_FILE='/nonexistent/ca.pem' is not a readable"),
    ({"STREAMAPP_SSL_KEY_FILE": "/etc/hostname"}, "STREAMAPP_SSL_KEY_FILE is set without STREAMAPP_SSL_CERT_FILE"),
    ({"STREAMAPP_SECURITY_PROTOCOL": "PLAINTEXT"}, "STREAMAPP_SASL_MECHANISM is set but"),
])
def test_cluster_settings__inconsistent_ones_stop_with_a_message_without_the_password(
        change: dict[str, str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        Settings.from_env({**SASL, **change})
    assert message in str(exc.value)
    assert "pw-5ecret" not in str(exc.value)
