"""Start-up: waiting for the broker, where peers reach this worker, whether the topology fits.

Every client made here takes the worker's client options (``runtime/connection.py``).

Kept apart from ``runtime/app.py`` so both can be tested without a Faust app.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiokafka import errors
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from yarl import URL

from streamapp.config import Settings
from streamapp.runtime import connection, faust_adapter

log = logging.getLogger(__name__)

WILDCARDS = ("0.0.0.0", "::", "")


def advertised_url(settings: Settings) -> URL:
    """The base URL peers reach this worker at: STREAMAPP_ADVERTISED_URL, else the bind address.

    Faust puts it in the group's assignment metadata (``canonical_url``);
    other workers forward calls and lookups for this worker's partitions to it.
    """
    if settings.advertised_url is not None:
        return URL(settings.advertised_url)
    if settings.web_host in WILDCARDS:
        log.warning("Listening on %s without STREAMAPP_ADVERTISED_URL: peers are told http://127.0.0.1:%s, "
                    "which reaches this worker only from its own host", settings.web_host or "*", settings.web_port)
        return URL(f"http://127.0.0.1:{settings.web_port}")
    host = f"[{settings.web_host}]" if ":" in settings.web_host else settings.web_host
    return URL(f"http://{host}:{settings.web_port}")


async def existing_partitions(kafka: Mapping[str, Any], topic: str) -> int | None:
    """The partition count of ``topic``, or None when it does not exist yet (never creates it)."""
    admin = AIOKafkaAdminClient(**kafka, request_timeout_ms=10000)
    try:
        await admin.start()
        # Listing all topics asks for no topic by name, so the broker cannot auto-create it.
        if topic not in await admin.list_topics():
            return None
        for info in await admin.describe_topics([topic]):
            if info["topic"] == topic and info["error_code"] == 0:
                return len(info["partitions"])
        return None
    finally:
        await admin.close()


async def check_partitions(kafka: Mapping[str, Any], topic: str, configured: int) -> None:
    """Refuse to start when the internal topic exists with another partition count.

    Keys are placed on partitions by the count: another count reads a key's
    state from the wrong partition and puts one key on two partitions.
    """
    existing = await faust_adapter.patiently(lambda: existing_partitions(kafka, topic), f"describe topic {topic}")
    if existing is not None and existing != configured:
        raise SystemExit(
            f"STREAMAPP_PARTITIONS={configured} but the internal topic {topic} has {existing} partitions: "
            f"start with STREAMAPP_PARTITIONS={existing}, or use a new STREAMAPP_APP_ID")


async def cluster_size(kafka: Mapping[str, Any]) -> int:
    """How many brokers the cluster has (its metadata, as the bootstrap servers tell it)."""
    admin = AIOKafkaAdminClient(**kafka, request_timeout_ms=10000)
    try:
        await admin.start()
        return len((await admin.describe_cluster())["brokers"])
    finally:
        await admin.close()


async def replication_factor(kafka: Mapping[str, Any], configured: int | None, internal_topic: str) -> int:
    """The replication factor of the topics this worker creates (``connection.replication_factor``).

    The cluster's metadata lists the brokers that are up, not every broker it
    has. A configured factor above that count is a mistake on a new app, but
    on one whose internal topic exists it is a broker that is down (one of
    three, with min.insync.replicas 2, is what RF 3 is for): the worker starts
    on its existing topics and says so (a topic it still has to create cannot
    be created until enough brokers are back).
    """
    brokers = await faust_adapter.patiently(lambda: cluster_size(kafka), "describe the cluster")
    if configured is not None and configured > brokers:
        existing = await faust_adapter.patiently(lambda: existing_partitions(kafka, internal_topic),
                                                 f"describe topic {internal_topic}")
        if existing is not None:
            log.warning("STREAMAPP_REPLICATION_FACTOR=%d but the cluster lists %d live broker(s): starting on the "
                        "existing topics (a missing one cannot be created until enough brokers are up)",
                        configured, brokers)
            return configured
    return connection.replication_factor(configured, brokers)


# What a broker answers to a client it will never let in: waiting does not help.
REFUSALS = (errors.SaslAuthenticationFailed, errors.AuthenticationFailedError, errors.UnsupportedSaslMechanismError,
            errors.IllegalSaslStateError, errors.AuthenticationMethodNotSupported, ssl.SSLCertVerificationError)


async def refusal(kafka: Mapping[str, Any]) -> BaseException | None:
    """Why the bootstrap servers refuse these credentials or this TLS setup, if that is why a client failed.

    aiokafka's bootstrap only says it could not bootstrap (and logs the cause);
    one plain connection per server shows the cause itself.
    """
    security = {k: v for k, v in kafka.items() if k != "bootstrap_servers"}
    for server in kafka["bootstrap_servers"]:
        host, _, port = server.rpartition(":")
        try:
            conn = await create_conn(host.strip("[]"), int(port), request_timeout_ms=5000, **security)
        except REFUSALS as exc:
            return exc
        except (TimeoutError, KafkaError, OSError):
            continue
        conn.close()
    return None


async def wait_for_broker(settings: Settings, kafka: Mapping[str, Any], patience: float) -> None:
    """Wait up to ``patience`` seconds for the broker to answer, instead of exiting at once.

    A worker started while Kafka is still starting (or restarting) would
    otherwise fail to bootstrap and exit. A broker that refuses the
    credentials or the TLS setup is not waited for: the worker exits at once.
    """
    deadline = time.monotonic() + patience
    said = 0.0
    while True:
        admin = AIOKafkaAdminClient(**kafka, request_timeout_ms=5000)
        try:
            await admin.start()
            return
        except (KafkaError, OSError) as exc:
            refused = await refusal(kafka)
            if refused is not None:
                reason = str(refused) if type(refused).__name__ in str(refused) \
                    else f"{type(refused).__name__}: {refused}"
                raise SystemExit(connection.redact(
                    f"The broker refused this worker ({connection.describe(settings)}): {reason}", settings)) from None
            now = time.monotonic()
            broker = settings.broker
            if now >= deadline:
                raise SystemExit(connection.redact(
                    f"Broker {broker} did not answer within {patience:g}s: {exc!r}", settings)) from None
            if now - said >= 5:
                log.warning("Waiting for the broker %s (up to %.0fs more): %r", broker, deadline - now, exc)
                said = now
        finally:
            await admin.close()
        await asyncio.sleep(1.0)


CLEAN_STOP = ".clean-stop"  # written by a worker that stopped cleanly, consumed by the next start
DROPPED = ".dropped-"  # prefix of a sibling dir holding tables dropped after an unclean stop, being deleted


def prepare_table_dir(table_dir: Path) -> bool:
    """Make ``table_dir`` ready; after an unclean stop, drop its local tables first. True when dropped.

    A worker killed (or one that exited because the broker refused a
    changelog record) can leave rows in its local RocksDB that never reached
    the changelog. Faust trusts local tables up to the last changelog offset
    the worker wrote and reads only what came after, so those rows would
    outlive the crash on this worker alone: a later owner, restoring from
    the changelog, would not have them (and would run journaled steps
    again). Without the mark of a clean stop, the tables are restored from
    the changelogs in full instead, as Kafka Streams does after an unclean
    shutdown.

    The dropped tables are moved aside at once (one rename) and deleted by a
    background thread: deleting some fifty RocksDB directories took a tenth
    of a second of the restart. Leftovers of a process that died before its
    sweep finished are swept by the next start.
    """
    table_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    marker = table_dir / CLEAN_STOP
    local = [path for path in table_dir.iterdir() if path.name != CLEAN_STOP]
    dropped = bool(local) and not marker.exists()
    if dropped:
        log.warning("The last stop was not clean: local tables dropped, to be restored from the changelogs dir=%s",
                    table_dir)
        aside = table_dir.parent / f"{DROPPED}{table_dir.name}-{uuid.uuid4().hex}"
        aside.mkdir()
        for path in local:
            path.rename(aside / path.name)
    marker.unlink(missing_ok=True)
    leftovers = sorted(table_dir.parent.glob(f"{DROPPED}{table_dir.name}-{'?' * 32}"))  # uuid4 hex: not another app's
    if leftovers:
        threading.Thread(target=_sweep, args=(leftovers,), name="dropped-tables-sweep", daemon=True).start()
    return dropped


def _sweep(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def mark_clean_stop(table_dir: Path) -> None:
    """Every table write reached the changelog and the tables are closed: the next start may trust them."""
    (table_dir / CLEAN_STOP).touch()
