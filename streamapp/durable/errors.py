"""Errors raised by durable handlers and the engine that runs them.

    StreamAppError                  root of everything streamapp raises
    ├── TerminalError               fails the invocation, never retried
    │   ├── NonDeterminismError     replay asked for a different step than journaled
    │   │                           (the runtime pauses the invocation, resumable)
    │   ├── ConcurrentStepError     a step was started outside the handler's own task
    │   ├── InvalidInputError       payload does not match the handler's input type
    │   ├── TooLargeError           a step result, state or result too large for the log
    │   ├── KilledError             an operator killed the invocation
    │   └── InvocationCancelledError an operator cancelled it (the step under way finished)
    └── RetryableError              retried after ``retry_after`` seconds (or by policy)

    CancelRequested (BaseException) internal: cancelled, no step starts after this
    Suspended (BaseException)       internal: the invocation waits for a durable
                                    timer; must not be caught by ``except Exception``

Any other exception a handler raises is treated like ``RetryableError``.
"""

from __future__ import annotations


class StreamAppError(Exception):
    """Root of streamapp's errors."""

    retriable: bool = False


class TerminalError(StreamAppError):
    """Fails the invocation at once; it is dead-lettered, never retried.

    ``status_code`` is what an HTTP caller waiting for the result gets
    (500 unless the handler says otherwise, e.g. 404 for an unknown entity).
    """

    retriable = False

    def __init__(self, message: str = "", status_code: int = 500) -> None:
        super().__init__(message)
        self.status_code = status_code


class NonDeterminismError(TerminalError):
    """A re-executed handler asked for a step that differs from its journal.

    Usually a code change (a step renamed, added or reordered) under an
    invocation that was in flight. The runtime pauses the invocation instead
    of failing it: fix or roll back the code, then resume it.
    """

    def __init__(self, index: int, journaled: str, requested: str) -> None:
        super().__init__(
            f"non-deterministic replay at step {index}: journal has {journaled}, "
            f"handler asked for {requested}"
        )
        self.index = index
        self.journaled = journaled
        self.requested = requested


class ConcurrentStepError(TerminalError):
    """A durable step was called from another asyncio task than the handler's.

    Steps are numbered in the order they are called; two in flight at once
    (``asyncio.gather``, ``create_task``) would share a journal index, and
    their order on replay would depend on timing. Raised for every such call,
    live or replayed, so the verdict does not depend on timing either.
    """

    def __init__(self, step: str) -> None:
        super().__init__(
            f"{step} was called from another asyncio task than the handler's (asyncio.gather, "
            "create_task, wait_for): durable steps must be awaited one at a time by the handler itself"
        )


class InvalidInputError(TerminalError):
    """The payload cannot be decoded into the handler's input type."""


class TooLargeError(TerminalError):
    """A journal entry, a state or a result is larger than the broker accepts in one record."""


class KilledError(TerminalError):
    """An operator killed the invocation; it runs no more steps."""


class InvocationCancelledError(TerminalError):
    """An operator cancelled the invocation: the step under way finished, nothing after it ran (HTTP 409)."""


class RetryableError(StreamAppError):
    """A transient failure; retried after ``retry_after`` seconds when given."""

    retriable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CancelRequested(BaseException):
    """Internal: an operator cancelled the invocation; no step starts after this (``runtime/operate.py``).

    A BaseException, like ``Suspended``: a handler's ``except Exception`` must not swallow it.
    """


class Suspended(BaseException):
    """Unwinds a handler that waits for a durable timer.

    Derives from BaseException so a handler's ``except Exception`` cannot
    swallow it. The engine catches it and parks the invocation until
    ``wake_at`` (seconds since the epoch).
    """

    def __init__(self, wake_at: float) -> None:
        super().__init__(wake_at)
        self.wake_at = wake_at
