"""Typed commands: one class per op, with exactly the fields that op reads; ``parse`` reads one from the wire.

The wire format is the JSON object of ``commands.py`` (``{"op": ..., ...}``),
unchanged: a command written by any earlier version still parses. ``parse``
is the only place a command is validated; the rules are those the engine has
always applied (``commands.invalid`` answers with them):

    - the op is known, and every required field is present and not null;
    - ``wake_at``, ``not_before``, ``before``, ``at``, ``index``, ``attempt``
      are numbers (not booleans) when present;
    - the ``id`` of a command naming an invocation is a string;
    - the ``state`` changes of a ``complete`` are an object (or empty).

Other fields are taken as sent (as before); unknown fields are ignored.
Fields an earlier version did not write are optional and then not checked
(``None``): the staleness fields ``attempt``, ``index`` and ``at``.

Staleness: what lets the state machine recognise a late copy.

    Entry     epoch, index, attempt     Complete  epoch, attempt
    Suspend   epoch, index, attempt     Fail      epoch, attempt
    Retry     epoch, attempt            Fire      epoch, at
    Activate  epoch (a second copy of the running activation changes nothing)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

NUMBERS = ("wake_at", "not_before", "before", "at", "index", "attempt")


class InvalidCommandError(ValueError):
    """A command that can never be applied; the message says why."""


@dataclass(slots=True)
class Invoke:
    """A new invocation (deduplicated by ``id``); delayed until ``not_before`` when that is in the future."""

    op: ClassVar[str] = "invoke"
    id: str
    service: str
    handler: str
    key: str
    payload: Any = None
    not_before: float | None = None
    source: Any = None
    trace: Any = None  # W3C trace context {"traceparent": ..., "tracestate": ...} (runtime/tracing.py), or None


@dataclass(slots=True)
class Activate:
    """The worker that issued ``epoch`` drives the partition from here on."""

    op: ClassVar[str] = "activate"
    epoch: str
    at: float | None = None  # when it was asked for (not read by the engine)


@dataclass(slots=True)
class Entry:
    """Journal entry ``index`` of attempt ``attempt``."""

    op: ClassVar[str] = "entry"
    id: str
    epoch: str
    index: int
    entry: Any
    attempt: int | None = None


@dataclass(slots=True)
class Suspend:
    """The attempt is parked on the durable sleep at journal ``index`` until ``wake_at``."""

    op: ClassVar[str] = "suspend"
    id: str
    epoch: str
    wake_at: float
    index: int | None = None
    attempt: int | None = None


@dataclass(slots=True)
class Retry:
    """Attempt ``attempt`` failed; the next one runs at ``wake_at``."""

    op: ClassVar[str] = "retry"
    id: str
    epoch: str
    wake_at: float
    error: Any
    attempt: int | None = None


@dataclass(slots=True)
class Complete:
    """Attempt ``attempt`` returned ``result``; ``state`` holds the key's state changes (None deletes)."""

    op: ClassVar[str] = "complete"
    id: str
    epoch: str
    attempt: int | None = None
    result: Any = None
    state: dict[str, Any] | None = None


@dataclass(slots=True)
class Fail:
    """Attempt ``attempt`` failed terminally: the invocation fails (or is paused)."""

    op: ClassVar[str] = "fail"
    id: str
    epoch: str
    error: Any
    attempt: int | None = None
    code: int | None = 500
    pause: bool = False


@dataclass(slots=True)
class Fire:
    """The timer armed for ``at`` is due."""

    op: ClassVar[str] = "fire"
    id: str
    epoch: str
    at: float | None = None


@dataclass(slots=True)
class Resume:
    """An operator runs a paused invocation again."""

    op: ClassVar[str] = "resume"
    id: str


@dataclass(slots=True)
class Kill:
    """An operator fails an invocation; it runs no more steps."""

    op: ClassVar[str] = "kill"
    id: str


@dataclass(slots=True)
class Cancel:
    """An operator stops an invocation gracefully: the step under way finishes, nothing after it runs."""

    op: ClassVar[str] = "cancel"
    id: str


@dataclass(slots=True)
class Purge:
    """An operator forgets a finished invocation's outcome before its retention ends."""

    op: ClassVar[str] = "purge"
    id: str


@dataclass(slots=True)
class Expire:
    """Forget outcomes of invocations finished before ``before``."""

    op: ClassVar[str] = "expire"
    before: float


Command = Invoke | Activate | Entry | Suspend | Retry | Complete | Fail | Fire | Resume | Kill | Cancel | Purge | Expire

# Actor and scheduler commands: applied only under the epoch they were issued in.
FENCED = (Entry, Suspend, Retry, Complete, Fail, Fire)


def _invoke(c: dict[str, Any]) -> Invoke:
    return Invoke(c["id"], c["service"], c["handler"], c["key"], c.get("payload"), c.get("not_before"),
                  c.get("source"), c.get("trace"))


def _complete(c: dict[str, Any]) -> Complete:
    state = c.get("state") or None
    if state is not None and not isinstance(state, dict):
        raise InvalidCommandError("command op=complete has state changes that are not an object")
    return Complete(c["id"], c["epoch"], c.get("attempt"), c.get("result"), state)


# op -> (required fields, reader). A reader runs once the required fields are present and numbers checked.
READERS: dict[str, tuple[tuple[str, ...], Any]] = {
    "invoke": (("id", "service", "handler", "key"), _invoke),
    "activate": (("epoch",), lambda c: Activate(c["epoch"], c.get("at"))),
    "entry": (("id", "epoch", "index", "entry"),
              lambda c: Entry(c["id"], c["epoch"], c["index"], c["entry"], c.get("attempt"))),
    "suspend": (("id", "epoch", "wake_at"),
                lambda c: Suspend(c["id"], c["epoch"], c["wake_at"], c.get("index"), c.get("attempt"))),
    "retry": (("id", "epoch", "wake_at", "error"),
              lambda c: Retry(c["id"], c["epoch"], c["wake_at"], c["error"], c.get("attempt"))),
    "complete": (("id", "epoch"), _complete),
    "fail": (("id", "epoch", "error"),
             lambda c: Fail(c["id"], c["epoch"], c["error"], c.get("attempt"), c.get("code", 500),
                            bool(c.get("pause")))),
    "fire": (("id", "epoch"), lambda c: Fire(c["id"], c["epoch"], c.get("at"))),
    "resume": (("id",), lambda c: Resume(c["id"])),
    "kill": (("id",), lambda c: Kill(c["id"])),
    "cancel": (("id",), lambda c: Cancel(c["id"])),
    "purge": (("id",), lambda c: Purge(c["id"])),
    "expire": (("before",), lambda c: Expire(c["before"])),
}


def parse(cmd: dict[str, Any]) -> Command:
    """The typed command of a decoded record; ``InvalidCommandError`` says why it can never be applied."""
    op = cmd.get("op")
    reader = READERS.get(op) if isinstance(op, str) else None
    if reader is None:
        raise InvalidCommandError(f"unknown command op={op!r}")
    required, read = reader
    missing = [name for name in required if cmd.get(name) is None]
    if missing:
        raise InvalidCommandError(f"command op={op} lacks {', '.join(missing)}")
    for name in NUMBERS:
        value = cmd.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise InvalidCommandError(f"command op={op} has a non-numeric {name}")
    if "id" in required and not isinstance(cmd["id"], str):
        raise InvalidCommandError(f"command op={op} has a non-string id")
    command: Command = read(cmd)
    return command
