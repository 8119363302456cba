"""The worker's log lines, formatted without colorlog when they go to a file or a pipe.

Faust's worker (mode) formats every line with colorlog's formatter, which
builds its escape-code map for each record even when the stream is not a
terminal and no colour is written: about 150 µs a line, against 20 µs for
``logging.Formatter`` with the same layout. A worker writes two lines per
invocation ("Handling invocation", "Invocation completed successfully", as
Restate's SDK does), so that was a tenth of its CPU under load. A terminal
keeps the coloured lines.
"""

from __future__ import annotations

import logging

from mode.utils.logging import ExtensionFormatter

# mode's coloured layout, without the colour and without its "extra" field (always empty here)
PLAIN_FORMAT = "[%(asctime)s] [%(process)s] [%(levelname)s] %(message)s"


def plain_when_not_a_terminal(logger: logging.Logger | None = None) -> int:
    """Handlers of ``logger`` (the root) writing mode's coloured lines to a non-terminal: a plain formatter."""
    changed = 0
    for handler in (logger or logging.getLogger()).handlers:
        stream = getattr(handler, "stream", None)
        if not isinstance(handler.formatter, ExtensionFormatter) or stream is None:
            continue
        isatty = getattr(stream, "isatty", None)
        if isatty is not None and isatty():
            continue
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
        changed += 1
    return changed
