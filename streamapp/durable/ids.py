"""Invocation ids: ``inv_`` + 26 base32 characters.

Ids of Kafka-fed invocations are derived from the source coordinates, so a
redelivered record maps to the same id and is not run twice. The coordinates
include the topic id (KIP-516): a topic deleted and created again under the
same name, or a topic of the same name on another cluster, numbers its
offsets from 0 again but has another topic id, so its records get new ids.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid


def _encode(data: bytes) -> str:
    return "inv_" + base64.b32encode(hashlib.sha256(data).digest()).decode().lower()[:26]


def for_record(app_id: str, topic: str, topic_id: str, partition: int, offset: int) -> str:
    return _encode(json.dumps(["kafka", app_id, topic, topic_id, partition, offset]).encode())


def for_idempotency_key(app_id: str, method: str, key: str, idempotency_key: str) -> str:
    # JSON, not ':'-joined: key "a:b" + idempotency key "c" must not collide with "a" + "b:c".
    return _encode(json.dumps(["http", app_id, method, key, idempotency_key]).encode())


def for_dead_letter(app_id: str, topic: str, partition: int, offset: int) -> str:
    """A replay of the dead letter at these coordinates: replayed twice, it is one invocation."""
    return _encode(json.dumps(["dead-letter", app_id, topic, partition, offset]).encode())


def random_id() -> str:
    return _encode(uuid.uuid4().bytes)
