"""streamapp: durable, per-key event handlers on Faust over Apache Kafka.

``faust -A streamapp worker`` finds ``streamapp.app``; it is built on first
access so that importing the handler API does not start building a worker.
"""

from typing import Any

from streamapp.durable import (
    ObjectContext,
    RetryableError,
    RetryPolicy,
    Service,
    SharedContext,
    StreamAppError,
    TerminalError,
)

__all__ = [
    "ObjectContext",
    "RetryPolicy",
    "RetryableError",
    "Service",
    "SharedContext",
    "StreamAppError",
    "TerminalError",
    "app",
]


def __getattr__(name: str) -> Any:
    if name == "app":
        from streamapp.runtime.main import app

        return app
    raise AttributeError(f"module 'streamapp' has no attribute {name!r}")
