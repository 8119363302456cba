"""What applying a command asks the worker to do; the state machine returns these, the executor runs them.

As in Restate's partition processor (``state_machine/actions.rs``): applying
a command changes rows and returns actions, and never starts a task, a timer
or a future itself. Who runs an action depends on what it is:

    action          run by                   why
    Activated       the executor, always     it decides leadership: its own activation makes it the
                                             leader; another's, while it leads, makes it stop and reclaim
    StartActor      the leader of ``epoch``  work begins only under the activation that drives the partition
    ArmTimer        the leader of ``epoch``  likewise (a follower's timers are rebuilt when it activates)
    CancelActor     whoever applies          stopping work is always safe (a no-op where nothing runs)
    StopAfterStep   whoever applies          likewise (a cancel: the step under way finishes)
    Finished        whoever applies          resolves the HTTP calls waiting in this process; counts outcomes
    EntryDecided    whoever applies          resolves the actor waiting in this process for its journal entry
    DeadLetter      whoever applies          at least once: a worker catching up applies again a command whose
                                             applier may have died before its dead letter was sent

A dropped timer needs no action: the ``timers`` row goes, and a fire of it
that still comes finds nothing armed for its ``at`` and is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Activated:
    """Partition ``p`` runs under ``epoch`` from here; the actions after this one are its rebuilt actor map."""

    p: int
    epoch: str
    unfinished: int  # invocations found unfinished in the partition
    resumed: int  # of them, those started again at once


@dataclass(slots=True)
class StartActor:
    """Run an attempt of ``rec`` (with its key's current state) under ``epoch``."""

    p: int
    epoch: str | None
    rec: dict[str, Any]


@dataclass(slots=True)
class ArmTimer:
    """Send a ``fire`` for invocation ``id`` at ``wake_at``."""

    p: int
    epoch: str | None
    id: str
    wake_at: float


@dataclass(slots=True)
class CancelActor:
    """Stop the actor of invocation ``id``, if it has one."""

    id: str


@dataclass(slots=True)
class StopAfterStep:
    """The actor of invocation ``id``, if it has one, starts no step from now on (a cancel)."""

    id: str


@dataclass(slots=True)
class Finished:
    """Invocation ``rec["id"]`` finished (``rec["status"]`` is completed or failed)."""

    rec: dict[str, Any]


@dataclass(slots=True)
class EntryDecided:
    """Journal entry ``index`` of invocation ``id`` counts (``applied``) or never will (another epoch's,
    or its attempt ended); the actor that sent it may go on, or must stop."""

    id: str
    index: int
    applied: bool


@dataclass(slots=True)
class DeadLetter:
    """Keep ``rec`` (its key and payload, with ``error``) in the dead-letter topic."""

    rec: dict[str, Any]
    error: str


Action = Activated | StartActor | ArmTimer | CancelActor | StopAfterStep | Finished | EntryDecided | DeadLetter
