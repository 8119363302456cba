"""The worker's log lines, formatted without colorlog when they go to a file or a pipe.

Faust's worker (mode) formats every line with colorlog's formatter, which
builds its escape-code map for each record even when the stream is not a
terminal and no colour is written: about 150 µs a line, against 20 µs for
``logging.Formatter`` with the same layout. A worker writes two lines per
invocation ("Handling invocation", "Invocation completed successfully", as
Restate's SDK does), so that was a tenth of its CPU under load. A terminal
keeps the coloured lines.

Lines to a file or a pipe are also written in batches (``BatchedLines``):
each line flushed on its own was a ``write`` system call, two per invocation,
and each lets the consumer thread take the interpreter lock away. INFO and
DEBUG lines reach the stream at most ``FLUSH_EVERY`` seconds after they were
logged; a WARNING or worse goes out at once, after the lines before it. At
exit (``logging.shutdown``) whatever is pending is written; a process killed
with SIGKILL loses at most the last ``FLUSH_EVERY`` seconds of INFO lines.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import IO, Any

from mode.utils.logging import ExtensionFormatter

# mode's coloured layout, without the colour and without its "extra" field (always empty here)
PLAIN_FORMAT = "[%(asctime)s] [%(process)s] [%(levelname)s] %(message)s"


FLUSH_EVERY = 0.1  # seconds an INFO line may wait in a batch


class BatchedLines(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler whose lines reach the stream in batches (see the module's doc)."""

    def __init__(self, stream: IO[str], flush_every: float = FLUSH_EVERY) -> None:
        super().__init__(stream)
        self.pending: list[str] = []
        self.flush_every = flush_every
        self.wake = threading.Event()
        threading.Thread(target=self._flush_soon, name="log-lines", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        with self.lock:  # type: ignore[union-attr]
            self.pending.append(line)
            first = len(self.pending) == 1
        if record.levelno >= logging.WARNING:
            self.flush()
        elif first:
            self.wake.set()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            lines, self.pending = self.pending, []
            try:
                if lines:
                    self.stream.write("".join(lines))
                self.stream.flush()
            except Exception:  # a closed or broken stream: as logging.StreamHandler, never raise
                pass

    def _flush_soon(self) -> None:
        while True:
            self.wake.wait()
            time.sleep(self.flush_every)
            self.wake.clear()
            self.flush()


def _isatty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def plain_when_not_a_terminal(logger: logging.Logger | None = None) -> int:
    """Handlers of ``logger`` (the root) writing mode's coloured lines to a non-terminal: plain lines, batched.

    Each such handler is replaced by a ``BatchedLines`` on the same stream,
    with the same level and filters. Returns how many were replaced.
    """
    target = logger or logging.getLogger()
    changed = 0
    for handler in list(target.handlers):
        stream = getattr(handler, "stream", None)
        if not isinstance(handler.formatter, ExtensionFormatter) or stream is None or _isatty(stream):
            continue
        batched = BatchedLines(stream)
        batched.setFormatter(logging.Formatter(PLAIN_FORMAT))
        batched.setLevel(handler.level)
        for f in handler.filters:
            batched.addFilter(f)
        handler.flush()
        target.removeHandler(handler)
        target.addHandler(batched)
        changed += 1
    return changed
