"""The worker's log lines skip colorlog when they do not go to a terminal, and records skip what no line prints
(``runtime/logformat.py``)."""

from __future__ import annotations

import io
import logging
import os
import sys
from typing import IO

import pytest
from mode.utils.logging import DEFAULT_COLOR_FORMAT, DEFAULT_COLORS, ExtensionFormatter

from streamapp.durable.mute import ReplayFilter
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


SWITCHES = ("_srcfile", "logThreads", "logMultiprocessing", "logAsyncioTasks")


@pytest.fixture
def switches(monkeypatch: pytest.MonkeyPatch) -> None:
    """logging's process-wide switches as they were, after the test (lighter_records sets them)."""
    for name in SWITCHES:
        if hasattr(logging, name):
            monkeypatch.setattr(logging, name, getattr(logging, name))


def plain_logger(stream: IO[str], fmt: str = logformat.PLAIN_FORMAT) -> logging.Logger:
    logger, handler = logger_with(stream)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter(fmt))
    return logger


def test_plain_lines_to_a_file__records_skip_caller_thread_and_process_name_and_lines_stay(switches, tmp_path):
    path = tmp_path / "worker.log"
    with path.open("w") as stream:
        logger = plain_logger(stream)
        assert logformat.plain_when_not_a_terminal(logger) == 0  # plain already
        expected = [s for s in SWITCHES if hasattr(logging, s)]
        assert logformat.lighter_records([logging.getLogger("logformat-null"), logger]) == expected
        assert logging._srcfile is None and not logging.logThreads and not logging.logMultiprocessing
        assert logging.logProcesses  # the layout prints the pid

        records: list[logging.LogRecord] = []
        logger.addFilter(lambda record: records.append(record) or True)
        logger.info("Handling invocation method=%s invocationID=%s", "S/h", "inv_1")
        # On disk at once (a killed worker keeps its last lines), with the same layout, pid included.
        line = path.read_text().splitlines()[-1]
        assert line.split("] ", 3)[1:] == [
            f"[{os.getpid()}", "[INFO", "Handling invocation method=S/h invocationID=inv_1"]
        assert (records[0].funcName, records[0].lineno, records[0].threadName, records[0].processName) == (
            "(unknown function)", 0, None, None)


def test_a_format_printing_the_caller_or_thread__keeps_what_it_prints(switches):
    stream = io.StringIO()
    logger = plain_logger(stream, "%(threadName)s %(funcName)s:%(lineno)d %(message)s")
    assert logformat.lighter_records([logger]) == [
        s for s in ("logMultiprocessing", "logAsyncioTasks") if hasattr(logging, s)]
    logger.info("hello")
    assert stream.getvalue() == (
        f"MainThread test_a_format_printing_the_caller_or_thread__keeps_what_it_prints:{sys._getframe().f_lineno - 2}"
        " hello\n")


def test_a_terminal_an_unknown_handler_or_a_filter__nothing_is_turned_off(switches):
    before = [getattr(logging, s) for s in SWITCHES if hasattr(logging, s)]
    coloured, _ = logger_with(Tty())
    assert logformat.lighter_records([coloured]) == []  # colorlog's formatter may print any field

    class Exporter(logging.Handler):  # reads what it likes of a record
        def emit(self, record: logging.LogRecord) -> None: ...

    exported = plain_logger(io.StringIO())
    exported.addHandler(Exporter())
    assert logformat.lighter_records([exported]) == []

    filtered = plain_logger(io.StringIO())
    filtered.handlers[0].addFilter(lambda record: record.lineno > 0)
    assert logformat.lighter_records([filtered]) == []

    class Subclassed(logging.Formatter): ...

    custom = plain_logger(io.StringIO())
    custom.handlers[0].setFormatter(Subclassed(logformat.PLAIN_FORMAT))
    assert logformat.lighter_records([custom]) == []
    assert [getattr(logging, s) for s in SWITCHES if hasattr(logging, s)] == before


def test_the_replay_mute_filter_is_understood(switches):
    muted = plain_logger(io.StringIO())
    muted.handlers[0].addFilter(ReplayFilter())
    assert "_srcfile" in logformat.lighter_records([muted])
