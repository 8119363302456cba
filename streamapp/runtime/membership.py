"""Group membership: static member ids (KIP-345), standby replicas, and what a fenced worker does.

Static membership (``STREAMAPP_INSTANCE_ID``, off by default). A worker that
joins with a ``group.instance.id`` keeps its place in the group when it
stops: it sends no LeaveGroup, and the broker holds its partitions for it
until its session expires. Restarted within that time with the same id, it
gets its old assignment back at once, with no rebalance of the others and
under the same generation (the others' generation checks see nothing; the
restarted process has none to compare yet). Its partitions are activated
as on any start (a fresh epoch in ``meta``), so actors of its previous life
could not act even if they still ran.

Why off by default: a clean stop hands nothing over either, so taking a
worker away (scale-down, a host retired) leaves its partitions idle for a
whole session timeout; and an id derived from the host or the data dir can
collide (containers with the same hostname and volume path), and two live
processes with one id fence each other. An operator who sets the id knows
it is stable per worker and unique; ``streamapp workers -n N`` turns one
base id into ``<base>-<i>``, one per process slot, stable across restarts.

Two processes with one id (a duplicate started while the first runs): the
broker gives the newcomer the member's place and fences the older one.
``faust_fence.watch_fence`` makes the fenced consumer hear so (heartbeat
v3 carries the id) and go silent instead of joining again (which would
fence the newcomer in turn, a flip every heartbeat); ``fenced`` below then
stops the worker: no command is applied from that moment, actors and
timers stop, the tables are marked for a full restore (the other process
wrote to these partitions meanwhile), and the process exits with
``EX_FENCED``, which the ``workers`` supervisor does not restart. Until the
fence is heard (one heartbeat interval) both processes may send
activations; the log orders them, the last applied wins, and actors of the
losing epoch get their journal entries refused (``partition.apply``): a
step may run twice, as on any handover, an invocation completes once.

Standby replicas (``STREAMAPP_STANDBY_REPLICAS``, default 1): Faust's
``table_standby_replicas``. Each table partition is also restored, continuously,
on that many other workers, so a worker that takes a partition over after
a failure reads only the changelog's tail. With one worker there is nowhere
to put a standby and Faust assigns none, so the default costs nothing
until a second worker joins. Standby restores go through the same
``PositionedTable.apply_changelog_batch`` as any recovery (a deposed
writer's late records are skipped there too), and only active partitions
appear in the assignor's table metadata, so owner lookups and readiness
ignore standbys.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamapp.runtime.app import Runtime

log = logging.getLogger(__name__)

EX_FENCED = 78  # exit status of a worker fenced by another process with its instance id (EX_CONFIG)


def process_instance_id(base: str | None, index: int) -> str | None:
    """The instance id of process slot ``index`` of ``streamapp workers`` (None: dynamic membership)."""
    return None if base is None else f"{base}-{index}"


def fenced(runtime: Runtime) -> None:
    """The group fenced this worker (another process joined with its instance id): stop driving, then exit."""
    if runtime.fenced_out:
        return
    runtime.fenced_out = True
    runtime.stalled = True  # the invocations agent applies nothing more (Runtime.fenced)
    known = runtime.engine.known_partitions()
    log.critical("Another process joined the group with group.instance.id=%s: this worker stops driving "
                 "partitions=%s and exits (status %d)", runtime.settings.instance_id, sorted(known), EX_FENCED)
    runtime.engine.release(known)
    runtime.delivery.forget()
    runtime.distrust_tables()
    raise SystemExit(EX_FENCED)
