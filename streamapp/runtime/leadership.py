"""Leadership: which partitions this worker drives, under which epoch, and whether its actors may still act.

Shared by the engine (which takes and gives up the lead as activations are
applied) and the actor pool (whose actors ask before each step), so neither
needs the other to be built first:

    leading     partition -> the epoch this worker leads it under (from its
                own ``activate`` command, until released or another worker's
                activation is applied);
    my_tokens   the activations this worker asked for and has not seen applied;
    owns        whether actors started under an epoch may still act: the
                worker leads the partition under that epoch, and has not just
                woken from a stall (``alive_at``, ``stall_limit``): until the
                runtime confirms it still belongs to the group, another
                worker may drive it;
    entries     the entry fence: an actor goes past a step only once the
                partition's log applied the step's journal entry under its
                epoch (``expect_entry``; the engine resolves it).
"""

from __future__ import annotations

import asyncio
import time


class Leadership:
    def __init__(self, stall_limit: float = float("inf")) -> None:
        self.leading: dict[int, str] = {}
        self.my_tokens: dict[int, str] = {}
        self.entry_waiters: dict[tuple[str, int], asyncio.Future[bool]] = {}
        # Liveness of this process: the runtime's timer stamps ``alive_at``; a gap
        # longer than ``stall_limit`` means the process was frozen (or starved) long
        # enough to have been expelled from the group without noticing yet.
        self.alive_at: float | None = None  # None until the timer first ran
        self.stall_limit = stall_limit

    def owns(self, p: int, epoch: str) -> bool:
        """Whether actors started under ``epoch`` may still act for partition ``p``."""
        fresh = self.alive_at is None or time.monotonic() - self.alive_at <= self.stall_limit
        return fresh and self.leading.get(p) == epoch

    def expect_entry(self, inv_id: str, index: int) -> asyncio.Future[bool]:
        """A future resolved when journal entry ``index`` of ``inv_id`` is applied (True) or refused (False)."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.entry_waiters[(inv_id, index)] = fut
        return fut

    def forget_entry(self, inv_id: str, index: int) -> None:
        self.entry_waiters.pop((inv_id, index), None)

    def entry_decided(self, inv_id: str, index: int, applied: bool) -> None:
        entry = self.entry_waiters.get((inv_id, index))
        if entry is not None and not entry.done():
            entry.set_result(applied)
