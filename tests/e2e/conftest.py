"""Workers serving the seed's two services on per-test topics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import harness


@pytest.fixture
def seed_env(broker: str, tmp_path: Path) -> dict[str, str]:
    posts, updates, dead = harness.unique("posts"), harness.unique("locations"), harness.unique("dlq")
    harness.create_topics([posts, updates, dead])
    return {
        "posts": posts,
        "updates": updates,
        "dead_letters": dead,
        "STREAMAPP_SUBSCRIPTIONS": f"{posts}=UserFeed/ProcessPost,{updates}=PackageTracker/UpdateLocation",
        "STREAMAPP_DEAD_LETTER_TOPIC": dead,
        "STREAMAPP_MODERATION_POLL_INTERVAL": "1",
    }


@pytest.fixture
def seed_workers(seed_env: dict[str, str], tmp_path: Path) -> Iterator[harness.WorkerFactory]:
    env = {k: v for k, v in seed_env.items() if k.startswith("STREAMAPP_")}
    factory = harness.WorkerFactory(tmp_path, harness.unique("seed"), env)
    yield factory
    factory.stop_all()


@pytest.fixture
def downstream(tmp_path: Path) -> Iterator[harness.Downstream]:
    backend = harness.Downstream(tmp_path / "downstream.log", "--pending-polls", "2").start()
    yield backend
    backend.stop()
