"""The worker's log lines, formatted without colorlog when they go to a file or a pipe.

Faust's worker (mode) formats every line with colorlog's formatter, which
builds its escape-code map for each record even when the stream is not a
terminal and no colour is written: about 150 µs a line, against 20 µs for
``logging.Formatter`` with the same layout. A worker writes two lines per
invocation ("Handling invocation", "Invocation completed successfully", as
Restate's SDK does), so that was a tenth of its CPU under load. A terminal
keeps the coloured lines.

The plain layout prints the time, the pid, the level and the message: a
record need not find its caller (a walk up the stack), nor note its thread,
process name or task. ``lighter_records`` turns those off (Python's
documented optimisations) when no handler prints them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from mode.utils.logging import ExtensionFormatter

from streamapp.durable.mute import ReplayFilter

# mode's coloured layout, without the colour and without its "extra" field (always empty here)
PLAIN_FORMAT = "[%(asctime)s] [%(process)s] [%(levelname)s] %(message)s"

# What a log record computes besides its message: the ``logging`` switch that turns it off, and the
# fields it fills. ``logProcesses`` stays: the plain layout prints the pid.
RECORD_EXTRAS: tuple[tuple[str, object, frozenset[str]], ...] = (
    ("_srcfile", None, frozenset({"pathname", "filename", "module", "lineno", "funcName"})),  # findCaller
    ("logThreads", False, frozenset({"thread", "threadName"})),
    ("logMultiprocessing", False, frozenset({"processName"})),
    ("logAsyncioTasks", False, frozenset({"taskName"})),  # Python 3.12 and later
)
_FIELD = re.compile(r"%\((\w+)\)")


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


def lighter_records(loggers: Iterable[logging.Logger] | None = None) -> list[str]:
    """Turn off what log records compute and no handler prints; the ``logging`` switches turned off.

    Only when every handler of ``loggers`` (every logger) is understood: it
    drops records (``NullHandler``), or writes them to a stream or a file
    with ``logging.Formatter`` and a ``%``-style format, and the only
    filters are the replay mute's. Any other handler or filter (colorlog's
    formatter on a terminal, an exporter, a formatter subclass) may read
    any field: then nothing changes. The switches are process-wide: the
    worker has configured its logging before it calls this. A record
    logged with ``stack_info=True`` gets its stack from the caller lookup,
    so without it that stack is not printed.
    """
    if loggers is None:
        loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                          if isinstance(logger, logging.Logger))]
    printed = _fields_printed(loggers)
    if printed is None:
        return []
    off = []
    for switch, value, fields in RECORD_EXTRAS:
        if hasattr(logging, switch) and not fields & printed and getattr(logging, switch) != value:
            setattr(logging, switch, value)
            off.append(switch)
    return off


def _fields_printed(loggers: Iterable[logging.Logger]) -> set[str] | None:
    """The record fields the handlers of ``loggers`` print; None if one of them may read any."""
    printed = set()
    for logger in loggers:
        if not all(isinstance(f, ReplayFilter) for f in logger.filters):
            return None
        for handler in logger.handlers:
            if type(handler).handle is logging.NullHandler.handle:
                continue
            if type(handler).emit not in (logging.StreamHandler.emit, logging.FileHandler.emit):
                return None
            if not all(isinstance(f, ReplayFilter) for f in handler.filters):
                return None
            formatter = handler.formatter
            if formatter is None:  # logging's default: the message only
                printed.add("message")
                continue
            if type(formatter) is not logging.Formatter or type(formatter._style) is not logging.PercentStyle:
                return None
            printed.update(_FIELD.findall(formatter._style._fmt))
    return printed
