"""Start-up: waiting for the broker, where peers reach this worker, whether the topology fits.

Kept apart from ``runtime/app.py`` so both can be tested without a Faust app.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from yarl import URL

from streamapp.config import Settings
from streamapp.runtime import faust_adapter

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


async def existing_partitions(servers: list[str], topic: str) -> int | None:
    """The partition count of ``topic``, or None when it does not exist yet (never creates it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=10000)
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


async def check_partitions(servers: list[str], topic: str, configured: int) -> None:
    """Refuse to start when the internal topic exists with another partition count.

    Keys are placed on partitions by the count: another count reads a key's
    state from the wrong partition and puts one key on two partitions.
    """
    existing = await faust_adapter.patiently(lambda: existing_partitions(servers, topic), f"describe topic {topic}")
    if existing is not None and existing != configured:
        raise SystemExit(
            f"STREAMAPP_PARTITIONS={configured} but the internal topic {topic} has {existing} partitions: "
            f"start with STREAMAPP_PARTITIONS={existing}, or use a new STREAMAPP_APP_ID")


def bootstrap_servers(broker: str) -> list[str]:
    """``kafka://h1:9092;kafka://h2:9092`` (Faust's broker setting) as host:port pairs."""
    return [part.split("://", 1)[-1] for part in broker.replace(",", ";").split(";") if part.strip()]


async def wait_for_broker(broker: str, patience: float) -> None:
    """Wait up to ``patience`` seconds for the broker to answer, instead of exiting at once.

    A worker started while Kafka is still starting (or restarting) would
    otherwise fail to bootstrap and exit.
    """
    deadline = time.monotonic() + patience
    said = 0.0
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(broker), request_timeout_ms=5000)
        try:
            await admin.start()
            return
        except (KafkaError, OSError) as exc:
            now = time.monotonic()
            if now >= deadline:
                raise SystemExit(f"Broker {broker} did not answer within {patience:g}s: {exc!r}") from None
            if now - said >= 5:
                log.warning("Waiting for the broker %s (up to %.0fs more): %r", broker, deadline - now, exc)
                said = now
        finally:
            await admin.close()
        await asyncio.sleep(1.0)


CLEAN_STOP = ".clean-stop"  # written by a worker that stopped cleanly, consumed by the next start


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
    """
    table_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    marker = table_dir / CLEAN_STOP
    local = [path for path in table_dir.iterdir() if path.name != CLEAN_STOP]
    dropped = bool(local) and not marker.exists()
    if dropped:
        log.warning("The last stop was not clean: local tables dropped, to be restored from the changelogs dir=%s",
                    table_dir)
        for path in local:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    marker.unlink(missing_ok=True)
    return dropped


def mark_clean_stop(table_dir: Path) -> None:
    """Every table write reached the changelog and the tables are closed: the next start may trust them."""
    (table_dir / CLEAN_STOP).touch()
