"""What a handler may do: the context objects passed as its first argument.

``SharedContext`` (read-only handlers) reads the key's committed state.
``ObjectContext`` (exclusive handlers) adds durable steps, timers, sends and
state changes. Every durable action is an entry in the invocation's journal;
on re-execution the journal answers instead of the outside world.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import inspect
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar, overload

from streamapp.durable import codec, mute
from streamapp.durable.errors import (
    ConcurrentStepError,
    NonDeterminismError,
    Suspended,
    TerminalError,
    TooLargeError,
)

T = TypeVar("T")
_DELETED = object()


class Clock(Protocol):
    def now(self) -> float: ...


class JournalSink(Protocol):
    """Where an invocation's journal entries and outgoing sends go (the runtime)."""

    async def append(self, entry: dict[str, Any]) -> None:
        """Make ``entry`` durable: return once it is, or once queued if ``settle`` waits for it."""

    async def send(self, target: dict[str, Any]) -> None:
        """Durably enqueue a new invocation (``target`` has id, service, key, handler, payload, not_before)."""


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None


class SharedContext:
    """Read-only view of one key: its committed state."""

    def __init__(self, service: str, key: str, state: Mapping[str, Any]) -> None:
        self.service = service
        self.key = key
        self._state = state

    def get(self, name: str, default: Any = None) -> Any:
        # A copy: mutating what was read must not change committed state.
        return copy.deepcopy(self._state.get(name, default))

    def state_keys(self) -> list[str]:
        return sorted(self._state)


class ObjectContext(SharedContext):
    """Exclusive access to one key for one invocation."""

    def __init__(
        self,
        *,
        service: str,
        key: str,
        invocation_id: str,
        state: Mapping[str, Any],
        journal: list[dict[str, Any]],
        sink: JournalSink,
        clock: Clock,
    ) -> None:
        super().__init__(service, key, state)
        self.invocation_id = invocation_id
        self._journal = journal
        self._sink = sink
        self._clock = clock
        self._index = 0
        self._changes: dict[str, Any] = {}
        self._task = _current_task()
        # The first misuse that makes the attempt's outcome void, even if the handler catches it.
        self.fault: NonDeterminismError | ConcurrentStepError | None = None
        mute.replaying.set(bool(journal))

    # -- state ---------------------------------------------------------
    def get(self, name: str, default: Any = None) -> Any:
        if name in self._changes:
            value = self._changes[name]
            return default if value is _DELETED else json.loads(value)
        return super().get(name, default)

    def set(self, name: str, value: Any) -> None:
        # Stored as JSON text so later mutation of ``value`` cannot leak in.
        try:
            self._changes[name] = json.dumps(codec.storable(value), separators=(",", ":"))
        except ValueError as exc:
            raise TerminalError(f"state '{name}' cannot be stored: {exc}") from None

    def clear(self, name: str) -> None:
        self._changes[name] = _DELETED

    def clear_all(self) -> None:
        for name in set(self._state) | set(self._changes):
            self._changes[name] = _DELETED

    def state_changes(self) -> dict[str, Any]:
        """Changes to apply when the invocation completes: name -> value, or None to delete."""
        return {k: None if v is _DELETED else json.loads(v) for k, v in self._changes.items()}

    def state_keys(self) -> list[str]:
        names = set(self._state) | set(self._changes)
        return sorted(n for n in names if self._changes.get(n) is not _DELETED)

    # -- journal -------------------------------------------------------
    @property
    def step_index(self) -> int:
        """Index of the step being executed (or the next one)."""
        return self._index

    @property
    def idempotency_key(self) -> str:
        """Stable key of the current step: pass it to downstream systems."""
        return f"{self.invocation_id}:{self._index}"

    def record_fault(self, error: NonDeterminismError | ConcurrentStepError) -> None:
        """Record ``error`` as the attempt's fault (the first one wins)."""
        if self.fault is None:
            self.fault = error

    def _replayed(self, kind: str, name: str) -> dict[str, Any] | None:
        """The journal entry for the next step, or None when running live."""
        if self._task is None:
            self._task = _current_task()
        elif _current_task() is not self._task:
            # Checked before the journal, so a replay gives the verdict a live run gives.
            label = {"run": f"ctx.run('{name}')", "sleep": "ctx.sleep"}.get(kind, f"ctx.{name}")
            misuse = ConcurrentStepError(label)
            self.record_fault(misuse)
            raise misuse
        index = self._index
        if index >= len(self._journal):
            mute.replaying.set(False)
            return None
        entry = self._journal[index]
        if entry["t"] != kind or entry["name"] != name:
            error = NonDeterminismError(index, f"{entry['t']} '{entry['name']}'", f"{kind} '{name}'")
            self.record_fault(error)
            raise error
        return entry

    async def _before_step(self) -> None:
        """Wait until the previous step counts, then let the runtime stop a live step it no longer owns.

        The runtime may return from ``append`` before the entry is durable
        (``runtime/step_sink.py``): its ``settle`` waits for that, so no step's
        function, sleep or send acts before the entries before it count.
        Either may raise a BaseException that ends the attempt.
        """
        settle = getattr(self._sink, "settle", None)
        if settle is not None:
            await settle()
        check = getattr(self._sink, "before_step", None)
        if check is not None:
            check()

    def _advance(self) -> None:
        self._index += 1
        mute.replaying.set(self._index < len(self._journal))

    # Two overloads: with one ``T | Awaitable[T]`` signature mypy cannot infer T for an async fn.
    @overload
    async def run(self, name: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T: ...
    @overload
    async def run(self, name: str, fn: Callable[..., T], *args: Any) -> T: ...

    async def run(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` once; its JSON result is journaled and replayed."""
        entry = self._replayed("run", name)
        if entry is None:
            await self._before_step()
            try:
                result = fn(*args)
                if inspect.isawaitable(result):
                    result = await result
            except TerminalError as exc:
                entry = {"t": "run", "name": name, "failure": str(exc)}
            else:
                try:
                    value = codec.storable(result)
                except ValueError as exc:
                    # Retrying would run ``fn``'s side effect again for the same outcome.
                    raise TerminalError(f"step '{name}' returned a result that is not JSON: {exc}") from exc
                entry = {"t": "run", "name": name, "value": value}
            try:
                await self._sink.append(entry)
            except TooLargeError as exc:
                # ``fn`` ran: journal the step as failed, so no retry runs its side effect again.
                entry = {"t": "run", "name": name, "failure": f"step '{name}' could not be journaled: {exc}"}
                await self._sink.append(entry)
            self._journal.append(entry)
        self._advance()
        if "failure" in entry:
            raise TerminalError(entry["failure"])
        return entry["value"]

    async def sleep(self, seconds: float) -> None:
        """Durable sleep: the invocation is parked until the timer fires."""
        entry = self._replayed("sleep", "sleep")
        if entry is None:
            if not math.isfinite(seconds):
                raise TerminalError(f"sleep of {seconds} seconds: the duration must be finite")
            await self._before_step()
            entry = {"t": "sleep", "name": "sleep", "wake_at": self._clock.now() + max(0.0, seconds)}
            await self._sink.append(entry)
            self._journal.append(entry)
        if not entry.get("fired") and entry["wake_at"] > self._clock.now():
            raise Suspended(entry["wake_at"])
        self._advance()

    async def send(
        self, service: str, key: str, handler: str, payload: Any = None, *, delay: float = 0.0
    ) -> str:
        """Enqueue an invocation of another handler (exactly once); returns its id."""
        name = f"send {service}/{handler}"
        entry = self._replayed("send", name)
        if entry is None:
            if not math.isfinite(delay):
                raise TerminalError(f"send with delay {delay}: the delay must be finite")
            await self._before_step()
            try:
                payload = codec.storable(payload)
            except ValueError as exc:
                raise TerminalError(f"payload for {service}/{handler} cannot be stored: {exc}") from None
            digest = hashlib.sha256(f"{self.invocation_id}:{self._index}".encode()).hexdigest()
            target_id = f"inv_{digest[:26]}"
            not_before = self._clock.now() + delay if delay > 0 else None
            await self._sink.send({
                "id": target_id, "service": service, "key": key, "handler": handler,
                "payload": payload, "not_before": not_before,
            })
            entry = {"t": "send", "name": name, "id": target_id}
            await self._sink.append(entry)
            self._journal.append(entry)
        self._advance()
        return entry["id"]  # type: ignore[no-any-return]
