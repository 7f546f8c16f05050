"""The attempt log's error text: short, one line, no URL credentials or query."""

from __future__ import annotations

import aiohttp
import pytest
from yarl import URL

from hub.jobs.webhook_sender import ERROR_MAX_CHARS, describe
from hub.net import BlockedURL, check_url


def test_url_credentials_and_query_are_not_stored() -> None:
    exc = aiohttp.InvalidURL("http://user:pa/ss@host.example/hook?token=abc")
    text = describe(exc)
    assert text.startswith("InvalidURL: http://host.example/hook?")
    assert "user" not in text and "pa/ss" not in text and "abc" not in text


def test_guard_refusal_keeps_its_reason() -> None:
    with pytest.raises(BlockedURL) as refused:
        check_url(URL("ftp://u:secret@127.0.0.1/x"), allow_private=False)
    assert describe(refused.value) == (
        "BlockedURL: ftp://127.0.0.1/x: must be an http or https URL")


def test_timeouts_and_odd_messages_read_as_one_short_line() -> None:
    assert describe(TimeoutError()) == "TimeoutError: no answer in time"
    assert describe(ValueError("bad\r\nline " + "x" * 500)).startswith("ValueError: bad line x")
    assert len(describe(ValueError("x" * 500))) == ERROR_MAX_CHARS
    assert describe(RuntimeError()) == "RuntimeError"
