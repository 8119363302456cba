"""Mute a handler's prints and logs while it replays journaled steps.

Each invocation runs in its own asyncio task, so a ContextVar scopes the
muting to that task: other handlers running at the same time still print.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from typing import Any, TextIO

replaying: contextvars.ContextVar[bool] = contextvars.ContextVar("streamapp_replaying", default=False)


class _MutableStream:
    """Stand-in for sys.stdout/sys.stderr that drops writes during replay."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        if replaying.get():
            return len(text)
        return self._inner.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ReplayFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not replaying.get()


_installed = False


def install() -> None:
    """Route stdout/stderr and the root logger's handlers through the mute."""
    global _installed
    if _installed:
        return
    _installed = True
    # Faust's worker redirects stdout into its log (as WARNING lines); the
    # seed's handlers print plain lines, so print to the real stdout again.
    if not isinstance(sys.stdout, _MutableStream) and sys.__stdout__ is not None:
        sys.stdout = _MutableStream(sys.__stdout__)
    for handler in logging.getLogger().handlers:
        handler.addFilter(ReplayFilter())
