"""The worker's log lines skip colorlog when they do not go to a terminal (``runtime/logformat.py``)."""

from __future__ import annotations

import io
import logging

from mode.utils.logging import DEFAULT_COLOR_FORMAT, DEFAULT_COLORS, ExtensionFormatter

from streamapp.runtime import logformat


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def logger_with(stream: io.StringIO) -> tuple[logging.Logger, logging.Handler]:
    logger = logging.getLogger(f"logformat-test-{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ExtensionFormatter(stream=stream, fmt=DEFAULT_COLOR_FORMAT, log_colors=DEFAULT_COLORS))
    logger.addHandler(handler)
    return logger, handler


def test_a_file_or_pipe_gets_plain_lines_with_the_same_layout() -> None:
    stream = io.StringIO()
    logger, handler = logger_with(stream)
    logger.info("Handling invocation method=%s invocationID=%s", "S/h", "inv_1")
    before = stream.getvalue().strip()
    assert logformat.plain_when_not_a_terminal(logger) == 1
    assert not isinstance(handler.formatter, ExtensionFormatter)
    logger.info("Handling invocation method=%s invocationID=%s", "S/h", "inv_1")
    after = stream.getvalue().splitlines()[-1]
    # Same fields, same order: "[time] [pid] [INFO] message"; only the timestamp may differ.
    assert before.split("] ", 2)[1:] == after.split("] ", 2)[1:]
    assert after.endswith("Handling invocation method=S/h invocationID=inv_1")


def test_a_terminal_keeps_its_colours() -> None:
    logger, handler = logger_with(Tty())
    assert logformat.plain_when_not_a_terminal(logger) == 0
    assert isinstance(handler.formatter, ExtensionFormatter)
