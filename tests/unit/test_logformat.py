"""Worker log lines to a file or a pipe: plain (no colorlog) and in batches (``runtime/logformat.py``)."""

from __future__ import annotations

import io
import logging
import time

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
    logger, _ = logger_with(stream)
    logger.info("Handling invocation method=%s invocationID=%s", "S/h", "inv_1")
    before = stream.getvalue().strip()
    assert logformat.plain_when_not_a_terminal(logger) == 1
    [batched] = logger.handlers
    assert isinstance(batched, logformat.BatchedLines) and batched.stream is stream
    assert not isinstance(batched.formatter, ExtensionFormatter)
    logger.info("Handling invocation method=%s invocationID=%s", "S/h", "inv_1")
    batched.flush()
    after = stream.getvalue().splitlines()[-1]
    # Same fields, same order: "[time] [pid] [INFO] message"; only the timestamp may differ.
    assert before.split("] ", 2)[1:] == after.split("] ", 2)[1:]
    assert after.endswith("Handling invocation method=S/h invocationID=inv_1")


def test_a_terminal_keeps_its_colours() -> None:
    logger, handler = logger_with(Tty())
    assert logformat.plain_when_not_a_terminal(logger) == 0
    assert isinstance(handler.formatter, ExtensionFormatter)


def test_info_lines_wait_for_their_batch_a_warning_takes_them_out_at_once_in_order() -> None:
    stream = io.StringIO()
    logger, _ = logger_with(stream)
    logformat.plain_when_not_a_terminal(logger)
    [batched] = logger.handlers
    assert isinstance(batched, logformat.BatchedLines)
    logger.info("first")
    logger.info("second")
    assert stream.getvalue() == "", "INFO lines are batched"
    logger.warning("third")
    assert [line.rsplit("] ", 1)[1] for line in stream.getvalue().splitlines()] == ["first", "second", "third"]


def test_a_batch_reaches_the_stream_within_its_interval_without_another_line() -> None:
    stream = io.StringIO()
    logger, _ = logger_with(stream)
    logformat.plain_when_not_a_terminal(logger)
    logger.info("alone")
    deadline = time.monotonic() + 10 * logformat.FLUSH_EVERY + 5  # generous: only a flusher that never runs misses
    while "alone" not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.getvalue().endswith("alone\n")
