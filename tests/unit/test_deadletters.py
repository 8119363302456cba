"""Dead-letter filters (``runtime/deadletters.py``): what a request may name, and what matches."""

from __future__ import annotations

import pytest

from streamapp.runtime.deadletters import BadFilterError, Filters, Letter


def letter(**headers: str) -> Letter:
    return Letter("dlq", 0, 7, 1_000.0, b"k1", b"{}", {"streamapp.service": "S", "streamapp.handler": "h",
                                                        "streamapp.error": "TerminalError: boom", **headers})


def test_filters__read_from_a_query_and_bad_times_refused() -> None:
    assert Filters.of({"service": "S", "since": "10", "until": "20.5", "other": "x"}) == Filters(
        service="S", since=10.0, until=20.5)
    assert Filters.of({}).empty() and not Filters.of({"reason": "boom"}).empty()
    for bad in ({"since": "yesterday"}, {"until": "nan"}):
        with pytest.raises(BadFilterError):
            Filters.of(bad)


def test_matches__every_named_filter_must_hold() -> None:
    d = letter()
    assert d.matches(Filters()) and d.matches(Filters(service="S", handler="h", key="k1", reason="boom"))
    assert d.matches(Filters(since=1_000.0, until=1_000.5))
    for miss in (Filters(service="T"), Filters(key="k2"), Filters(reason="other"), Filters(since=1_000.5),
                 Filters(until=1_000.0)):
        assert not d.matches(miss), miss
    assert d.view()["replayOf"] is None and letter(**{"streamapp.replay.of": "dlq/0/3"}).view()["replayOf"] == "dlq/0/3"
