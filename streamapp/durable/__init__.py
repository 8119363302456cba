"""The durable-handler API: services, contexts, errors, retry policies."""

from streamapp.durable.context import ObjectContext, SharedContext
from streamapp.durable.errors import (
    ConcurrentStepError,
    InvalidInputError,
    InvocationCancelledError,
    KilledError,
    NonDeterminismError,
    RetryableError,
    StreamAppError,
    TerminalError,
)
from streamapp.durable.service import Registry, RetryPolicy, Service

__all__ = [
    "ConcurrentStepError",
    "InvalidInputError",
    "InvocationCancelledError",
    "KilledError",
    "NonDeterminismError",
    "ObjectContext",
    "Registry",
    "RetryPolicy",
    "RetryableError",
    "Service",
    "SharedContext",
    "StreamAppError",
    "TerminalError",
]
