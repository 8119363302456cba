"""Settings, read from the environment in one place (``Settings.from_env``)."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlsplit

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

DEFAULT_SUBSCRIPTIONS = (
    ("social-media-posts", "UserFeed/ProcessPost"),
    ("package-location-updates", "PackageTracker/UpdateLocation"),
)


@dataclasses.dataclass(frozen=True)
class Settings:
    app_id: str = "streamapp"
    broker: str = "kafka://localhost:9092"
    web_host: str = "127.0.0.1"
    web_port: int = 8080
    # the base URL peers use to reach this worker (forwarded calls, lookups); None: from web_host/web_port
    advertised_url: str | None = None
    data_dir: Path = Path("data")
    partitions: int = 8
    # topic -> "Service/handler"
    subscriptions: tuple[tuple[str, str], ...] = DEFAULT_SUBSCRIPTIONS
    dead_letter_topic: str = "streamapp-dead-letters"
    producer_linger: float = 0.002   # seconds a produce request waits to batch records
    session_timeout: float = 10.0     # consumer group session (seconds)
    broker_wait: float = 60.0         # seconds a starting worker waits for the broker
    max_running: int = 1000          # invocations executing at once per worker
    max_pending: int = 10_000        # queued invocations before the sources pause
    max_body_bytes: int = 1_048_576
    results_retention: float = 86_400.0  # seconds a finished invocation's outcome is kept
    operator_token: str | None = dataclasses.field(default=None, repr=False)
    # extra services, "module:attribute" (a Service or a list of them)
    extra_services: tuple[str, ...] = ()
    # How every Kafka client reaches the cluster (runtime/connection.py turns these into client options).
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = dataclasses.field(default=None, repr=False)
    ssl_ca_file: Path | None = None     # None: the system's CAs
    ssl_cert_file: Path | None = None   # client certificate (mTLS), optional
    ssl_key_file: Path | None = None
    # replicas of the topics a worker creates; None: min(3, brokers in the cluster), found at start-up
    replication_factor: int | None = None
    # "otel": OpenTelemetry spans of invocations (the otel extra, runtime/tracing.py); "off": none, no cost
    tracing: str = "off"
    tracing_file: Path | None = None  # spans as JSON lines to this file (else the configured provider's exporter)
    # group.instance.id (KIP-345, static membership); None: a dynamic member (runtime/membership.py says why)
    instance_id: str | None = None
    # standby copies of each table partition kept warm on other workers (Faust's table_standby_replicas)
    standby_replicas: int = 1

    @property
    def table_dir(self) -> Path:
        """Where this app's RocksDB tables live: apps sharing a data dir never share files."""
        return self.data_dir / "apps" / self.app_id

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()

        def num(name: str, default: float, kind: type = int, low: float = 0, high: float = math.inf,
                why: str = "") -> float:
            return env_number(env, name, default, kind, low, high, why)

        subs = defaults.subscriptions
        if env.get("STREAMAPP_SUBSCRIPTIONS"):
            subs = tuple(_parse_subscription(s) for s in env["STREAMAPP_SUBSCRIPTIONS"].split(","))
        web_port = int(num("STREAMAPP_WEB_PORT", defaults.web_port, high=65535))
        advertised = env.get("STREAMAPP_ADVERTISED_URL") or None
        app_id = env.get("STREAMAPP_APP_ID", defaults.app_id)
        if not _APP_ID.match(app_id) or app_id in (".", ".."):
            raise SystemExit(f"STREAMAPP_APP_ID={app_id!r} must be letters, digits, '.', '_' or '-' "
                             "(it names topics and a directory)")
        return cls(
            app_id=app_id,
            broker=env.get("STREAMAPP_BROKER", defaults.broker),
            web_host=env.get("STREAMAPP_WEB_HOST", defaults.web_host),
            web_port=web_port,
            advertised_url=_parse_advertised_url(advertised, web_port) if advertised else None,
            data_dir=Path(env.get("STREAMAPP_DATA_DIR", str(defaults.data_dir))),
            partitions=int(num("STREAMAPP_PARTITIONS", defaults.partitions, low=1)),
            subscriptions=subs,
            dead_letter_topic=env.get("STREAMAPP_DEAD_LETTER_TOPIC", defaults.dead_letter_topic),
            producer_linger=num("STREAMAPP_PRODUCER_LINGER", defaults.producer_linger, float, high=10),
            session_timeout=num("STREAMAPP_SESSION_TIMEOUT", defaults.session_timeout, float, 6, 1800,
                                " (Kafka's group.min/max.session.timeout.ms defaults)"),
            broker_wait=num("STREAMAPP_BROKER_WAIT", defaults.broker_wait, float),
            max_running=int(num("STREAMAPP_MAX_RUNNING", defaults.max_running, low=1)),
            max_pending=int(num("STREAMAPP_MAX_PENDING", defaults.max_pending, low=1)),
            max_body_bytes=int(num("STREAMAPP_MAX_BODY_BYTES", defaults.max_body_bytes, low=1)),
            results_retention=num("STREAMAPP_RESULTS_RETENTION", defaults.results_retention, float, low=1),
            operator_token=env.get("STREAMAPP_OPERATOR_TOKEN") or None,
            extra_services=tuple(s.strip() for s in env.get("STREAMAPP_SERVICES", "").split(",") if s.strip()),
            replication_factor=int(num("STREAMAPP_REPLICATION_FACTOR", 0, low=1)) or None,
            instance_id=_parse_instance_id(env.get("STREAMAPP_INSTANCE_ID") or None),
            standby_replicas=int(num("STREAMAPP_STANDBY_REPLICAS", defaults.standby_replicas, high=10)),
            **_security(env),
            **_tracing(env),
        )


def env_number(env: Mapping[str, str], name: str, default: float, kind: type = int, low: float = 0,
               high: float = math.inf, why: str = "") -> float:
    """The number in ``env[name]`` (``default`` when unset or empty); exit with a message naming it if invalid."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if not low <= value <= high:  # NaN fails this too
        bounds = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
        raise SystemExit(f"{name}={raw!r} must be {bounds}{why}")
    return value  # type: ignore[no-any-return]


class _Security(TypedDict):
    security_protocol: str
    sasl_mechanism: str | None
    sasl_username: str | None
    sasl_password: str | None
    ssl_ca_file: Path | None
    ssl_cert_file: Path | None
    ssl_key_file: Path | None


def _security(env: Mapping[str, str]) -> _Security:
    """The STREAMAPP_SECURITY_PROTOCOL, STREAMAPP_SASL_* and STREAMAPP_SSL_* settings, checked together.

    A setting that the protocol would not use is refused rather than ignored
    (a SASL username with PLAINTEXT most likely means a forgotten protocol).
    Messages name variables and never show the password.
    """
    protocol = env.get("STREAMAPP_SECURITY_PROTOCOL") or "PLAINTEXT"
    if protocol.upper() not in SECURITY_PROTOCOLS:
        raise SystemExit(f"STREAMAPP_SECURITY_PROTOCOL={protocol!r} must be one of {', '.join(SECURITY_PROTOCOLS)}")
    protocol = protocol.upper()
    sasl, tls = protocol.startswith("SASL_"), protocol in ("SSL", "SASL_SSL")

    def sasl_setting(name: str) -> str | None:
        var = f"STREAMAPP_SASL_{name}"
        value = env.get(var) or None
        if value is not None and not sasl:
            raise SystemExit(f"{var} is set but STREAMAPP_SECURITY_PROTOCOL={protocol}: SASL settings need "
                             "SASL_PLAINTEXT or SASL_SSL")
        if value is None and sasl:
            raise SystemExit(f"STREAMAPP_SECURITY_PROTOCOL={protocol} needs {var}")
        return value

    def tls_file(name: str) -> Path | None:
        var = f"STREAMAPP_SSL_{name}_FILE"
        raw = env.get(var) or None
        if raw is None:
            return None
        if not tls:
            raise SystemExit(f"{var} is set but STREAMAPP_SECURITY_PROTOCOL={protocol}: TLS files need SSL or SASL_SSL")
        if not Path(raw).is_file():
            raise SystemExit(f"{var}={raw!r} is not a readable file")
        return Path(raw)

    mechanism = sasl_setting("MECHANISM")
    if mechanism is not None and mechanism.upper() not in SASL_MECHANISMS:
        raise SystemExit(f"STREAMAPP_SASL_MECHANISM={mechanism!r} must be one of {', '.join(SASL_MECHANISMS)}")
    found = _Security(
        security_protocol=protocol, sasl_mechanism=mechanism.upper() if mechanism else None,
        sasl_username=sasl_setting("USERNAME"), sasl_password=sasl_setting("PASSWORD"),
        ssl_ca_file=tls_file("CA"), ssl_cert_file=tls_file("CERT"), ssl_key_file=tls_file("KEY"))
    if found["ssl_key_file"] is not None and found["ssl_cert_file"] is None:
        raise SystemExit("STREAMAPP_SSL_KEY_FILE is set without STREAMAPP_SSL_CERT_FILE (the client certificate)")
    return found


class _Tracing(TypedDict):
    tracing: str
    tracing_file: Path | None


def _tracing(env: Mapping[str, str]) -> _Tracing:
    """STREAMAPP_TRACING (off | otel) and STREAMAPP_TRACING_FILE; otel needs the otel extra installed."""
    mode = (env.get("STREAMAPP_TRACING") or "off").strip().lower()
    if mode not in ("off", "otel"):
        raise SystemExit(f"STREAMAPP_TRACING={env['STREAMAPP_TRACING']!r} must be off or otel")
    file = env.get("STREAMAPP_TRACING_FILE") or None
    if file is not None and mode != "otel":
        raise SystemExit("STREAMAPP_TRACING_FILE is set but STREAMAPP_TRACING is off: set STREAMAPP_TRACING=otel")
    if mode == "otel" and not _installed("opentelemetry.sdk"):
        raise SystemExit("STREAMAPP_TRACING=otel needs OpenTelemetry: pip install 'streamapp[otel]'")
    return _Tracing(tracing=mode, tracing_file=Path(file) if file else None)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing (or stubbed out as None)
        return False


_APP_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
# Kafka's rule for group.instance.id (and topic names); 200, not 249: ``workers -n N`` appends "-<i>"
_INSTANCE_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def _parse_instance_id(text: str | None) -> str | None:
    if text is None:
        return None
    if not _INSTANCE_ID.match(text) or text in (".", ".."):
        raise SystemExit(f"STREAMAPP_INSTANCE_ID={text!r} must be 1 to 200 letters, digits, '.', '_' or '-' "
                         "(Kafka's group.instance.id), the same after every restart of this worker and "
                         "different from every other worker's")
    return text


def _parse_advertised_url(text: str, web_port: int) -> str:
    """``http(s)://host[:port]`` (the port defaults to STREAMAPP_WEB_PORT), normalised."""
    bad = f"STREAMAPP_ADVERTISED_URL={text!r} must look like http://host:port"
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise SystemExit(bad) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username or parts.password:
        raise SystemExit(bad)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port if port is not None else web_port}"


def _parse_subscription(text: str) -> tuple[str, str]:
    topic, sep, target = text.strip().partition("=")
    if not sep or "/" not in target:
        raise SystemExit(f"STREAMAPP_SUBSCRIPTIONS entry {text!r} must look like topic=Service/handler")
    return topic.strip(), target.strip()
