"""Where peers are told to reach a worker (Faust's canonical URL), from the settings."""

from __future__ import annotations

import logging

import pytest

from streamapp.config import Settings
from streamapp.runtime.startup import advertised_url


def test_advertised_url__setting_wins_over_the_bind_address() -> None:
    s = Settings.from_env({"STREAMAPP_WEB_HOST": "0.0.0.0", "STREAMAPP_ADVERTISED_URL": "http://10.1.2.3:8080"})
    assert str(advertised_url(s)) == "http://10.1.2.3:8080"


@pytest.mark.parametrize(("host", "expected"), [("127.0.0.2", "http://127.0.0.2:9000"), ("::1", "http://[::1]:9000")])
def test_advertised_url__specific_bind_address_is_advertised(host: str, expected: str) -> None:
    assert str(advertised_url(Settings(web_host=host, web_port=9000))) == expected


def test_advertised_url__wildcard_bind_without_setting__loopback_and_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        url = advertised_url(Settings(web_host="0.0.0.0", web_port=9000))
    assert str(url) == "http://127.0.0.1:9000"
    assert "STREAMAPP_ADVERTISED_URL" in caplog.text
