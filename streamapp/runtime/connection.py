"""How every Kafka client of a worker reaches the cluster: servers, security, replication.

One reading of the settings for all of them, so none is left on PLAINTEXT:

    Faust's consumer and producer (and the topics they create)   faust_credentials(settings)
    the broker wait, the topology check (startup.py)             client_options(settings)
    the delivery's admin client and offset prober (delivery.py)  client_options(settings)
    the topic-id lookups (topic_ids.py, via sources.py)          client_options(settings)

``client_options`` are aiokafka keyword arguments (``bootstrap_servers``,
``security_protocol``, ``sasl_*``, ``ssl_context``); the password is among
them, so they are never logged: ``describe`` is what may be shown.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context
from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from streamapp.config import Settings

MAX_DEFAULT_REPLICATION = 3


def bootstrap_servers(broker: str) -> list[str]:
    """``kafka://h1:9092;kafka://h2:9092`` (Faust's broker setting) as host:port pairs."""
    return [part.split("://", 1)[-1] for part in broker.replace(",", ";").split(";") if part.strip()]


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL (hostname checked; the system's CAs unless a CA file is set)."""
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=_str(settings.ssl_ca_file), certfile=_str(settings.ssl_cert_file),
            keyfile=_str(settings.ssl_key_file))
    except (OSError, ssl.SSLError) as exc:  # unreadable or not PEM; FileNotFoundError is an OSError
        files = " ".join(f"STREAMAPP_SSL_{name.upper()}_FILE={path}" for name, path in (
            ("ca", settings.ssl_ca_file), ("cert", settings.ssl_cert_file), ("key", settings.ssl_key_file)) if path)
        raise SystemExit(f"Cannot load the TLS files {files or '(the system CAs)'}: {exc}") from None
    return context


def security_options(settings: Settings, context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """aiokafka's security keyword arguments for these settings (includes the password: never log them)."""
    options: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = context if context is not None else ssl_context(settings)
    if settings.security_protocol.startswith("SASL_"):
        options.update(sasl_mechanism=settings.sasl_mechanism, sasl_plain_username=settings.sasl_username,
                       sasl_plain_password=settings.sasl_password)
    return options


def client_options(settings: Settings, context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client of this worker: the servers and the security settings."""
    return {"bootstrap_servers": bootstrap_servers(settings.broker), **security_options(settings, context)}


def faust_credentials(settings: Settings, context: ssl.SSLContext | None = None) -> CredentialsT | None:
    """Faust's ``broker_credentials`` for the same settings (Faust hands them to aiokafka as above)."""
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return SSLCredentials(context if context is not None else ssl_context(settings))
    return SASLCredentials(
        username=settings.sasl_username, password=settings.sasl_password, mechanism=settings.sasl_mechanism,
        ssl_context=(context if context is not None else ssl_context(settings)) if protocol == "SASL_SSL" else None)


def describe(settings: Settings, *, servers: bool = True) -> str:
    """The connection settings as ``key=value`` fields, fit for logs and errors: never the password."""
    fields = [f"broker={settings.broker}"] if servers else []
    fields.append(f"security_protocol={settings.security_protocol}")
    if settings.security_protocol.startswith("SASL_"):
        fields += [f"sasl_mechanism={settings.sasl_mechanism}", f"sasl_username={settings.sasl_username}"]
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        for name in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
            value = getattr(settings, name)
            if value is not None:
                fields.append(f"{name}={value}")
    return " ".join(fields)


def redact(text: str, settings: Settings) -> str:
    """``text`` with the SASL password masked (for messages built from errors a client raised)."""
    return text.replace(settings.sasl_password, "***") if settings.sasl_password else text


def replication_factor(configured: int | None, brokers: int) -> int:
    """The replication factor of the topics a worker creates: STREAMAPP_REPLICATION_FACTOR, else min(3, brokers)."""
    if configured is None:
        return max(1, min(MAX_DEFAULT_REPLICATION, brokers))
    if configured > brokers:
        raise SystemExit(f"STREAMAPP_REPLICATION_FACTOR={configured} but the cluster has {brokers} broker(s): "
                         f"a topic cannot have more replicas than brokers")
    return configured


def topic_config(replication: int) -> dict[str, str]:
    """Topic config set at creation: ``min.insync.replicas`` = RF-1 from RF 3 on (one replica may be down).

    With RF 1 or 2 the broker's default (1) stays: requiring both replicas of
    RF 2 would stop every write while one broker restarts.
    """
    return {"min.insync.replicas": str(replication - 1)} if replication >= 3 else {}


def _str(path: object) -> str | None:
    return None if path is None else str(path)
